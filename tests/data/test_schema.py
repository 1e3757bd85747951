import numpy as np
import pandas as pd
import pytest

from cellrlhf.data.schema import (
    CONTROL_LABEL,
    SchemaError,
    SchemaMapping,
    perturbation_targets,
    standardize_obs,
    validate_perturbation_obs,
)


def _obs(conditions, contexts=None, types=None):
    n = len(conditions)
    return pd.DataFrame(
        {
            "condition": conditions,
            "line": contexts or ["K562"] * n,
            "modality": types or ["CRISPRi"] * n,
            "dose_col": ["1"] * n,
        },
        index=[f"c{i}" for i in range(n)],
    )


def _mapping(**extra):
    spec = {
        "columns": {
            "perturbation": "condition",
            "cell_context": "line",
            "perturbation_type": "modality",
            "dose": "dose_col",
            "batch": {"value": "run1"},
        },
        "control_values": ["ctrl"],
    }
    spec.update(extra)
    return SchemaMapping.from_dict(spec)


def test_standardize_maps_columns_controls_and_sorts_combinations():
    obs = _obs(
        ["ctrl", "KLF1", "TBX3+SGK1", "SGK1+TBX3"],
        types=["CRISPRi", "knockdown", "crispri", "CRISPRi"],
    )
    out = standardize_obs(obs, _mapping())
    assert list(out.columns) == [
        "perturbation",
        "cell_context",
        "perturbation_type",
        "dose",
        "batch",
    ]
    assert out["perturbation"].tolist() == [CONTROL_LABEL, "KLF1", "SGK1+TBX3", "SGK1+TBX3"]
    assert set(out["perturbation_type"]) == {"CRISPRi"}  # aliases canonicalized
    assert set(out["batch"]) == {"run1"}
    assert out.index.tolist() == obs.index.tolist()


def test_ignore_targets_and_custom_separator():
    obs = _obs(["ctrl", "KLF1_ctrl", "KLF1_CEBPA"])
    out = standardize_obs(obs, _mapping(target_separator="_", ignore_targets=["ctrl"]))
    assert out["perturbation"].tolist() == [CONTROL_LABEL, "KLF1", "CEBPA+KLF1"]


def test_extra_columns_are_carried():
    obs = _obs(["ctrl", "KLF1"])
    obs["tissue"] = ["blood", "blood"]
    out = standardize_obs(obs, _mapping(extra={"tissue_name": "tissue"}))
    assert out["tissue_name"].tolist() == ["blood", "blood"]


@pytest.mark.parametrize(
    ("conditions", "fragment"),
    [
        (["ctrl", "non-targeting", "KLF1"], "looks like a control label"),
        (["ctrl", "KLF1+ctrl"], "combines a control label"),
        (["ctrl", "KLF1+KLF1"], "same target twice"),
        (["ctrl", "+"], "no target left"),
    ],
)
def test_bad_perturbation_labels_raise_with_the_fix(conditions, fragment):
    with pytest.raises(SchemaError, match=fragment) as info:
        standardize_obs(_obs(conditions), _mapping())
    assert "schema.control_values" in str(info.value)


def test_missing_column_lists_available_columns():
    mapping = SchemaMapping.from_dict({"columns": {"perturbation": "nope", "cell_context": "line"}})
    with pytest.raises(SchemaError, match=r"obs\['nope'\].*Available obs columns.*condition"):
        standardize_obs(_obs(["ctrl"]), mapping)


def test_required_columns_and_unknown_standard_column():
    with pytest.raises(SchemaError, match="cell_context is required"):
        standardize_obs(
            _obs(["ctrl"]), SchemaMapping.from_dict({"columns": {"perturbation": "condition"}})
        )
    with pytest.raises(SchemaError, match="unknown standard column"):
        SchemaMapping.from_dict({"columns": {"cell_type": "line"}})
    with pytest.raises(SchemaError, match="unknown key"):
        SchemaMapping.from_dict({"columns": {}, "controls": ["x"]})


def test_missing_values_are_counted():
    obs = _obs(["ctrl", "KLF1", "KLF1"])
    obs.loc["c1", "line"] = np.nan
    with pytest.raises(SchemaError, match="1 missing value"):
        standardize_obs(obs, _mapping())


def test_unknown_perturbation_type():
    with pytest.raises(SchemaError, match="unknown perturbation type.*'prime editing'"):
        standardize_obs(_obs(["ctrl", "KLF1"], types=["CRISPRi", "prime editing"]), _mapping())


def test_duplicate_cell_names():
    obs = _obs(["ctrl", "KLF1"])
    obs.index = ["same", "same"]
    with pytest.raises(SchemaError, match="obs_names_make_unique"):
        standardize_obs(obs, _mapping())


def test_contexts_without_controls_are_named():
    obs = _obs(["ctrl", "KLF1", "KLF1"], contexts=["A", "A", "B"])
    out = standardize_obs(obs, _mapping())
    validate_perturbation_obs(out)  # fine without the requirement
    with pytest.raises(SchemaError, match=r"\['B'\] have perturbed cells but no control"):
        validate_perturbation_obs(out, require_control=True)


def test_perturbation_targets():
    assert perturbation_targets("A+B") == ["A", "B"]
    assert perturbation_targets(CONTROL_LABEL) == []
