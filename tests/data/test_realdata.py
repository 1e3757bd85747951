"""Integration on the real Norman 2019 / McFaline-Figueroa 2023 subset: every task, every split."""

from pathlib import Path

import pytest

from cellrlhf.data.build import build_datasets
from cellrlhf.data.config import load_config
from cellrlhf.data.layout import open_dataset_dir
from cellrlhf.data.leakage import check_no_leakage
from cellrlhf.data.task_templates import TASKS

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "data" / "norman_mcfaline.yaml"
LIMITS = [
    "progress=false",
    "sft.tasks.cell_annotation.max_examples=200",
    "sft.tasks.cell_generation.max_examples=100",
    "sft.tasks.perturbation_response.max_examples=300",
    "sft.tasks.perturbation_identification.max_examples=200",
    "sft.tasks.perturbation_effect.per_group=1",
    "pretrain.max_cells=1000",
]

pytestmark = [pytest.mark.realdata, pytest.mark.slow]
NO_VALIDATION = "split.n_validation_perturbations=0"


@pytest.mark.parametrize(
    ("kind", "extra"),
    [
        ("unseen_single", ["de.method=wilcoxon"]),
        ("unseen_combo", ["split.test_fraction=0.6", "de.method=welch"]),
        # validation perturbations exist only for unseen_single / unseen_combo
        ("unseen_context", ["split.test_contexts=[U87MG]", "de.method=welch", NO_VALIDATION]),
        ("random_cells", ["de.method=welch", NO_VALIDATION]),
    ],
)
def test_norman_mcfaline_every_task_and_split(real_data_dir, tmp_path, kind, extra):
    config = load_config(CONFIG, [f"split.kind={kind}", *LIMITS, *extra])
    result = build_datasets(config, out_dir=tmp_path / kind, data_dir=real_data_dir)
    manifest = result.manifest
    assert manifest["simulated"] is False
    assert manifest["source"]["sha256"].startswith("220998f5")
    assert manifest["vocab"]["n_genes"] == 500
    assert "TMSB4X" not in manifest["perturbation_targets_unmeasured"]  # the one measured target
    assert "KLF1" in manifest["perturbation_targets_unmeasured"]
    built = open_dataset_dir(result.path)
    check_no_leakage(built)
    tasks = set(built.sft["train"]["task"])
    assert tasks == set(TASKS)
    assert built.rl["test"].num_rows > 0
    row = built.rl["test"][0]
    assert len(row["reference_perturbed"]) == len(row["decoded_control"]) == 500
    assert 0.0 < manifest["decoder"]["r2"] <= 1.0
    if kind == "unseen_context":
        assert set(built.rl["test"]["cell_context"]) == {"U87MG"}
    if kind == "unseen_combo":
        assert all(r == "combo" for r in built.rl["test"]["split_kind"])
    if kind == "unseen_single":
        held = set(manifest["split"]["test_targets"])
        assert held and not held & set(built.rl["train"]["perturbation"])
        # the config holds out two validation singles: RL selects its policy on them
        validation = set(built.splits["validation_targets"])
        assert len(validation) == 2 and not validation & held
        assert set(built.rl["validation"]["perturbation"]) <= validation
        assert not validation & set(built.rl["train"]["perturbation"])
        # CRISPRa of KLF1 drives erythroid genes: a real DE answer when KLF1 is held out or not
        de = {
            r["perturbation"]: r["de_genes_up"]
            for split in ("train", "test")
            for r in built.rl[split]
        }
        if "KLF1" in de:
            assert de["KLF1"], "KLF1 activation should have up-regulated genes"


def test_pbmc68k_cell_types(tmp_path, monkeypatch):
    pytest.importorskip("scanpy")  # the bundled copy (verified) is used when no data dir has it
    config = load_config(CONFIG.with_name("pbmc68k.yaml"), ["progress=false"])
    result = build_datasets(config, out_dir=tmp_path / "pbmc")
    built = open_dataset_dir(result.path)
    assert set(built.sft["train"]["task"]) == {"cell_annotation", "cell_generation"}
    assert len(set(built.sft["test"]["cell_context"])) >= 8
    assert built.rl is None and "rl" not in result.manifest["counts"]


FOLD_LIMITS = [
    "progress=false",
    "sft.tasks.perturbation_response.max_examples=200",
    "sft.tasks.perturbation_response.max_eval_examples=50",
    "pretrain.max_cells=500",
    "decoder.max_cells=2000",
    "de.method=welch",
]


def _pairs(records) -> set[tuple[str, str]]:
    return {(r["perturbation"], r["cell_context"]) for r in records}


@pytest.mark.parametrize(
    "name",
    [
        "mcfaline_unseen_pair",
        "norman_unseen_single_folds",
        "norman_unseen_combo_folds",
        "norman_unseen_combo_folds_all",
    ],
)
def test_fold_configs_build_fold_0(real_data_dir, tmp_path, name):
    config = load_config(CONFIG.with_name(f"{name}.yaml"), FOLD_LIMITS)
    result = build_datasets(config, out_dir=tmp_path / name, data_dir=real_data_dir)
    built = open_dataset_dir(result.path)
    check_no_leakage(built)
    splits = built.splits
    assert splits["fold"] == 0 and splits["folds"] == config.split.folds
    units = [u for fold in splits["fold_units"] for u in fold]
    assert len(units) == len(set(units))
    rl = built.rl["train"]
    rl_train = set(zip(rl["perturbation"], rl["cell_context"], strict=True))
    if name == "mcfaline_unseen_pair":
        assert set(built.manifest["cell_contexts"]) == {"A172", "T98G", "U87MG"}
        assert len(units) == 27  # 9 kinase targets x 3 lines
        test, validation = _pairs(splits["test_pairs"]), _pairs(splits["validation_pairs"])
        assert {f"{p}@{c}" for p, c in test} == set(splits["fold_units"][0])
        assert len(test) == 9 and len({p for p, _ in test}) == 9  # one line per target
        assert len(validation) == 3 and not validation & test
        assert not (test | validation) & rl_train
        # every held-out target is trained in another line
        assert {p for p, _ in test | validation} <= {p for p, _ in rl_train}
        assert {(r["perturbation"], r["cell_context"]) for r in built.rl["test"]} == test
        assert built.rl["validation"].num_rows == 3
    elif name == "norman_unseen_single_folds":
        assert sorted(len(f) for f in splits["fold_units"]) == [3] * 6  # 18 singles
        assert splits["test_perturbations"] == splits["fold_units"][0]
        assert len(splits["validation_perturbations"]) >= 2
        held = set(splits["test_targets"]) | set(splits["validation_targets"])
        assert not {t for p, _ in rl_train for t in p.split("+")} & held
    elif name == "norman_unseen_combo_folds_all":
        # every one of the 15 combinations, 3 per fold, 10 with an unmeasured single
        assert sorted(len(f) for f in splits["fold_units"]) == [3] * 5
        assert all("+" in u for u in units) and len(units) == 15
        assert splits["test_perturbations"] == splits["fold_units"][0]
        held = set(splits["test_perturbations"]) | set(splits["validation_perturbations"])
        assert len(held) == 5 and not held & {p for p, _ in rl_train}
        test = built.rl["test"]
        for pert, prompt in zip(test["perturbation"], test["prompt"], strict=True):
            for single in pert.split("+"):
                measured = single in {p for p, _ in rl_train}
                assert (f"{single} </pert> alone in k562: not measured" in str(prompt)) != measured
    else:
        assert sorted(u for fold in splits["fold_units"] for u in fold) == [
            "KLF1+MAP2K6",
            "KLF1+TGFBR2",
            "MAP2K3+MAP2K6",
            "MAP2K3+SLC38A2",
            "MAPK1+TGFBR2",
        ]
        (combo,) = splits["test_perturbations"]
        assert combo == splits["fold_units"][0][0]
        assert len(splits["validation_perturbations"]) == 2
        assert set(combo.split("+")) <= {p for p, _ in rl_train}  # its singles are trained
