import json
import re
import shutil

import numpy as np
import pytest

from cellrlhf.cell2text.decoder import ExpressionDecoder
from cellrlhf.cell2text.encoding import encode
from cellrlhf.cell2text.markup import extract_cell
from cellrlhf.cell2text.vocab import GeneVocab
from cellrlhf.data.build import BuildError, build_datasets
from cellrlhf.data.expression import transform_block
from cellrlhf.data.fingerprint import hash_dataset
from cellrlhf.data.layout import open_dataset_dir
from cellrlhf.data.leakage import LeakageError, check_no_leakage
from cellrlhf.data.schema import CONTROL_LABEL
from cellrlhf.data.task_templates import TASKS
from tests.fixtures.sim_data import SIM_SETTINGS, small_config

SFT_COLUMNS = ["messages", "task", "perturbation", "cell_context", "cell_ids", "template"]
RL_COLUMNS = [
    "prompt",
    "control_prompt",
    "perturbation",
    "cell_context",
    "perturbation_type",
    "split_kind",
    "reference_perturbed",
    "reference_control",
    "decoded_control",
    "reference_sentences",
    "reference_cell_ids",
    "de_genes_up",
    "de_genes_down",
    "n_cells",
    "n_control_cells",
    "control_split",
    "template",
]


def test_output_layout_matches_the_contract(built_by_kind):
    result = built_by_kind["unseen_single"]
    path = result.path
    for name in ("manifest.json", "gene_vocab.json", "expression_decoder.json", "splits.json"):
        assert (path / name).exists(), name
    built = open_dataset_dir(path)
    assert built.pretrain.column_names == ["text", "cell_id"]
    assert set(built.sft) == {"train", "validation", "test"}
    assert set(built.rl) == {"train", "test"}
    for split in built.sft.values():
        assert split.column_names == SFT_COLUMNS
    for split in built.rl.values():
        assert split.column_names == RL_COLUMNS
    assert not list(path.parent.glob(".*partial"))  # staging renamed away
    manifest = built.manifest
    assert manifest["simulated"] is True and "SIMULATED" in manifest["simulated_note"]
    assert manifest["source"]["kind"] == "simulated"
    assert manifest["leakage_check"]["passed"] is True
    vocab = GeneVocab.load(path)
    assert manifest["vocab"]["n_genes"] == len(vocab) == SIM_SETTINGS["n_genes"]
    targets = set(manifest["perturbation_targets"])
    assert targets == {f"QT{i + 1}" for i in range(SIM_SETTINGS["n_perturbations"])}
    assert set(manifest["perturbation_targets_unmeasured"]) == {
        t for t in targets if t not in vocab
    }
    assert {t["version"] for t in manifest["templates"].values()} == {1}


def test_every_task_and_every_paraphrase_is_built(built_by_kind):
    built = open_dataset_dir(built_by_kind["random_cells"].path)
    train = built.sft["train"]
    assert set(train["task"]) == set(TASKS)
    used = {}
    for template in train["template"]:
        task, _, ids = template.split("/")
        used.setdefault(task, set()).add(ids.split("u")[1].split("a")[0])
    assert all(len(used[task]) >= 4 for task in TASKS), used


def test_same_config_same_fingerprint_other_seed_other(tmp_path, built_by_kind):
    first = built_by_kind["unseen_single"]
    again = build_datasets(
        small_config(split=first.manifest["config"]["split"]), out_dir=tmp_path / "again"
    )
    assert again.fingerprint == first.fingerprint
    assert again.manifest["part_fingerprints"] == first.manifest["part_fingerprints"]
    reseeded = build_datasets(
        small_config(split=first.manifest["config"]["split"], seed=1), out_dir=tmp_path / "seed1"
    )
    assert reseeded.fingerprint != first.fingerprint


def test_fingerprints_are_the_saved_content(built_by_kind):
    result = built_by_kind["random_cells"]
    built = open_dataset_dir(result.path)
    parts = result.manifest["part_fingerprints"]
    assert hash_dataset(built.pretrain) == parts["pretrain"]
    for split in ("train", "validation", "test"):
        assert hash_dataset(built.sft[split]) == parts["sft"][split]
    for split in ("train", "test"):
        assert hash_dataset(built.rl[split]) == parts["rl"][split]


def test_streaming_from_backed_file_equals_in_memory(tmp_path, sim_adata):
    path = tmp_path / "sim.h5ad"
    sim_adata.write_h5ad(path)
    split = {"kind": "random_cells", "test_fraction": 0.2}
    file_config = small_config(source={"path": str(path)}, split=split)
    memory_config = small_config(source={"path": str(path), "backed": False}, split=split)
    streamed = build_datasets(file_config, out_dir=tmp_path / "streamed")
    loaded = build_datasets(memory_config, out_dir=tmp_path / "loaded")
    passed = build_datasets(small_config(split=split), out_dir=tmp_path / "passed", adata=sim_adata)
    assert streamed.manifest["part_fingerprints"] == loaded.manifest["part_fingerprints"]
    assert streamed.manifest["part_fingerprints"] == passed.manifest["part_fingerprints"]
    assert streamed.manifest["simulated"] is True  # read from the file's uns
    decoders = [ExpressionDecoder.load(r.path) for r in (streamed, loaded)]
    np.testing.assert_array_equal(decoders[0].slope, decoders[1].slope)


def _log1p_rows(adata, cell_ids):
    rows = adata.obs_names.get_indexer(cell_ids)
    assert (rows >= 0).all()
    return transform_block(adata.X[rows].tocsr().astype(np.float32), "log1p_cp10k")


def _encoded(adata, cell_ids):
    """cell2text's own sentences of ``cell_ids`` (the public encode API)."""
    subset = adata[list(cell_ids)].copy()
    encode(subset, top_k=40, seed=0)
    return subset.obs["cell_sentence"].tolist()


def test_round_trip_rows_back_to_anndata(built_by_kind, sim_adata):
    result = built_by_kind["random_cells"]
    built = open_dataset_dir(result.path)
    pretrain = built.pretrain.select(range(0, len(built.pretrain), 7))
    expected = _encoded(sim_adata, pretrain["cell_id"])
    assert all(expected)
    for text, sentence, cell in zip(pretrain["text"], expected, pretrain["cell_id"], strict=True):
        assert extract_cell(text).sentence == sentence
        context = sim_adata.obs.loc[cell, "cell_context"]
        perturbation = sim_adata.obs.loc[cell, "perturbation"]
        assert text.startswith(f"cell_context: {context}; perturbation: <pert> ")
        if perturbation == CONTROL_LABEL:
            assert "<pert> <control> </pert>" in text
    # SFT answers and prompts hold the named cells' sentences
    response = built.sft["test"].filter(lambda r: r["task"] == "perturbation_response")
    for row in response.select(range(5)):
        sentences = _encoded(sim_adata, row["cell_ids"])
        assert extract_cell(row["messages"][-1]["content"]).sentence == sentences[0]
        if len(row["cell_ids"]) == 2:  # a control cell in the prompt
            assert extract_cell(row["messages"][1]["content"]).sentence == sentences[1]
    # RL references are the means of the split's cells
    splits = built.splits
    test_cells = set(splits["cells"]["test"])
    obs = sim_adata.obs
    assert built.rl["test"].num_rows >= 3
    for row in built.rl["test"].select(range(3)):
        group = obs.index[
            (obs["perturbation"] == row["perturbation"])
            & (obs["cell_context"] == row["cell_context"])
        ]
        members = [c for c in group if c in test_cells]
        assert len(members) == row["n_cells"]
        np.testing.assert_allclose(
            row["reference_perturbed"],
            np.asarray(_log1p_rows(sim_adata, members).mean(axis=0)).ravel(),
            rtol=1e-5,
            atol=1e-6,
        )
        assert set(row["reference_cell_ids"]) <= set(members)


def test_decoder_is_fitted_on_training_cells_only(built_by_kind, sim_adata):
    result = built_by_kind["unseen_single"]
    built = open_dataset_dir(result.path)
    train = built.splits["cells"]["train"]
    decoder = ExpressionDecoder.load(result.path)
    assert decoder.params["n_cells"] == len(train)
    refit = ExpressionDecoder.fit(_training_adata(sim_adata, train), top_k=40)
    np.testing.assert_allclose(decoder.slope, refit.slope, rtol=1e-9)
    np.testing.assert_allclose(decoder.intercept, refit.intercept, rtol=1e-9)


def _training_adata(adata, cells):
    import anndata as ad
    import pandas as pd

    return ad.AnnData(
        _log1p_rows(adata, cells),
        obs=pd.DataFrame(index=pd.Index(cells)),
        var=pd.DataFrame(index=adata.var_names),
    )


def test_rl_rows_carry_the_reward_references(built_by_kind):
    result = built_by_kind["unseen_single"]
    built = open_dataset_dir(result.path)
    n_genes = result.manifest["vocab"]["n_genes"]
    test_perts = set(built.splits["test_perturbations"])
    assert built.rl["test"].num_rows > 0
    for split in ("train", "test"):
        for row in built.rl[split]:
            assert len(row["reference_perturbed"]) == len(row["reference_control"]) == n_genes
            assert len(row["decoded_control"]) == n_genes
            assert [m["role"] for m in row["prompt"]] == ["system", "user"]
            assert 0 < len(row["reference_sentences"]) <= 16
            assert row["n_cells"] >= 15
            assert row["split_kind"] == ("combo" if "+" in row["perturbation"] else "single")
            assert (row["perturbation"] in test_perts) == (split == "test")
            assert row["control_split"] == "train"


def test_de_answers_follow_the_simulated_truth(built_by_kind, sim_adata):
    truth = sim_adata.uns["simulation"]["perturbations"]
    rows = list(open_dataset_dir(built_by_kind["random_cells"].path).rl["train"])
    for row in rows:
        info = truth[row["perturbation"]]
        genes = row["de_genes_up"] + row["de_genes_down"]
        if info["class"] == "null":
            assert len(genes) <= 2, row["perturbation"]  # BH at 5 %: nothing, or a stray gene
        elif info["class"] == "active":
            programs = {g[1] for g in genes if g[1] != "X"}
            assert programs & set(info["programs"]), row["perturbation"]


@pytest.mark.parametrize(
    "kind", ["random_cells", "unseen_single", "unseen_combo", "unseen_context"]
)
def test_no_leakage_in_any_split(built_by_kind, kind):
    built = open_dataset_dir(built_by_kind[kind].path)
    summary = check_no_leakage(built)
    assert summary["sft_rows"] > 0 and summary["pretrain_rows"] > 0
    splits = built.splits
    if kind == "unseen_context":
        assert splits["test_contexts"] == ["SIM-CL2"]
        # a held-out context has no training controls: its own serve as reference
        assert set(built.rl["test"]["control_split"]) == {"test"}
        assert set(built.sft["train"]["cell_context"]) == {"SIM-CL1"}
        assert set(built.rl["test"]["cell_context"]) == {"SIM-CL2"}
    if kind == "unseen_combo":
        combo = splits["test_perturbations"][0]
        assert "+" in combo and combo not in set(built.sft["train"]["perturbation"])
        for target in combo.split("+"):
            assert target in set(built.sft["train"]["perturbation"])


def test_leakage_check_catches_planted_leaks(built_by_kind, tmp_path):
    from datasets import Dataset, concatenate_datasets

    source = built_by_kind["unseen_single"].path
    copy = tmp_path / "leaky"
    shutil.copytree(source, copy)
    built = open_dataset_dir(copy)
    test_cell = built.splits["cells"]["test"][0]
    leaked = concatenate_datasets(
        [
            built.pretrain,
            Dataset.from_dict(
                {"text": ["x"], "cell_id": [test_cell]}, features=built.pretrain.features
            ),
        ]
    )
    _replace(leaked, copy / "pretrain")
    with pytest.raises(LeakageError, match="test cell"):
        check_no_leakage(open_dataset_dir(copy))

    shutil.rmtree(copy / "pretrain")
    shutil.copytree(source / "pretrain", copy / "pretrain")
    built = open_dataset_dir(copy)
    target = built.splits["test_targets"][0]
    _plant_sft_chat_naming(built, target, copy)
    with pytest.raises(LeakageError, match="held-out target"):
        check_no_leakage(open_dataset_dir(copy))


def _plant_sft_chat_naming(built, target: str, copy) -> None:
    """Add a training chat that names ``target`` to the copied data set at ``copy``."""
    from datasets import Dataset, DatasetDict, concatenate_datasets

    row = dict(built.sft["train"][0])
    row["messages"] = [{"role": "user", "content": f"what does <pert> {target} </pert> do?"}]
    row["perturbation"] = ""
    train = concatenate_datasets(
        [built.sft["train"], Dataset.from_list([row], features=built.sft["train"].features)]
    )
    sft = DatasetDict(
        {"train": train, "validation": built.sft["validation"], "test": built.sft["test"]}
    )
    _replace(sft, copy / "sft")


def _replace(dataset, path):
    """Save ``dataset`` over ``path`` (it may be memory-mapped from there)."""
    fresh = path.with_name(path.name + ".new")
    dataset.save_to_disk(str(fresh))
    shutil.rmtree(path)
    fresh.rename(path)


def test_balanced_sampling_of_a_task(tmp_path):
    tasks = {
        "cell_annotation": {
            "max_examples": None,
            "balance": {"by": "perturbation", "strategy": "downsample", "per_group": 5},
        }
    }
    result = build_datasets(
        small_config(sft={"tasks": tasks}, rl={"enabled": False}, split={"kind": "random_cells"}),
        out_dir=tmp_path / "balanced",
    )
    built = open_dataset_dir(result.path)
    counts = {}
    for pert in built.sft["train"]["perturbation"]:
        counts[pert] = counts.get(pert, 0) + 1
    assert set(counts.values()) == {5}
    assert CONTROL_LABEL in counts


def test_refuses_to_overwrite_foreign_directories(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("precious")
    with pytest.raises(BuildError, match="refusing to overwrite"):
        build_datasets(small_config(), out_dir=foreign)
    assert (foreign / "thesis.txt").read_text() == "precious"


def test_failed_build_leaves_no_output(tmp_path, monkeypatch):
    import cellrlhf.data.build as build_module

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(build_module, "check_no_leakage", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        build_datasets(small_config(), out_dir=tmp_path / "out")
    assert not list(tmp_path.iterdir())


def test_manifest_records_split_membership(built_by_kind):
    path = built_by_kind["unseen_single"].path
    manifest = json.loads((path / "manifest.json").read_text())
    splits = json.loads((path / "splits.json").read_text())
    assert manifest["split"]["test_perturbations"] == splits["test_perturbations"]
    assert sum(manifest["split"]["cells"].values()) == SIM_SETTINGS["n_cells"]


def test_metadata_prefixes():
    from cellrlhf.data.scan import cell_prefixes

    one = cell_prefixes({"cell_context": np.array(["K562", "A172", "K562"], dtype=object)}, 3)
    assert one.tolist() == ["cell_context: K562;", "cell_context: A172;", "cell_context: K562;"]
    two = cell_prefixes(
        {
            "cell_context": np.array(["K562"], dtype=object),
            "perturbation": np.array(["A+B"], dtype=object),
        },
        1,
    )
    assert two.tolist() == ["cell_context: K562; perturbation: <pert> A B </pert>;"]
    assert cell_prefixes({}, 2).tolist() == ["", ""]


def test_validation_perturbations_get_rl_prompts_and_stay_out_of_training(tmp_path):

    split = {
        "kind": "unseen_single",
        "test_fraction": 0.3,
        "validation_fraction": 0.1,
        "n_validation_perturbations": 2,
    }
    result = build_datasets(small_config(split=split), out_dir=tmp_path / "built")
    built = open_dataset_dir(result.path)
    splits = built.splits
    held = set(splits["validation_perturbations"])
    assert len(splits["validation_targets"]) == 2 and held
    assert not held & set(splits["test_perturbations"])
    assert set(built.rl) == {"train", "validation", "test"}
    assert set(built.rl["validation"]["perturbation"]) <= held
    assert built.rl["validation"].num_rows > 0
    for name in ("train", "test"):
        assert not held & set(built.rl[name]["perturbation"])
    assert not held & set(built.sft["train"]["perturbation"])
    assert held & set(built.sft["validation"]["perturbation"])  # SFT validates on them too
    # validation mirrors test: the held-out perturbation's change is taken against the context's
    # training controls (not the few controls drawn into validation, whose noise both sides share)
    assert set(built.rl["validation"]["control_split"]) == {"train"}
    test_controls = {
        (r["cell_context"], r["n_control_cells"])
        for r in built.rl["test"].select_columns(["cell_context", "n_control_cells"])
    }
    for row in built.rl["validation"].select_columns(["cell_context", "n_control_cells"]):
        assert (row["cell_context"], row["n_control_cells"]) in test_controls
    check_no_leakage(built)

    # a training chat naming a validation target is a leak
    copy = tmp_path / "leaky"
    shutil.copytree(result.path, copy)
    built = open_dataset_dir(copy)
    target = splits["validation_targets"][0]
    _plant_sft_chat_naming(built, target, copy)
    with pytest.raises(LeakageError, match="held-out validation target"):
        check_no_leakage(open_dataset_dir(copy))


# ------------------------------------------------------------------ unseen_pair, folds
PAIR_SPLIT = {
    "kind": "unseen_pair",
    "folds": 3,  # 10 singles x 2 lines: 20 pairs, each single's 2 pairs in 2 different folds
    "n_validation_pairs": 2,
    "validation_fraction": 0.1,
}


@pytest.fixture(scope="module")
def pair_fold_build(tmp_path_factory):
    """Fold 1 of a 3-fold unseen_pair config on the simulator, built through the CLI."""
    import yaml

    from cellrlhf.data.cli import cli

    root = tmp_path_factory.mktemp("pair")
    config = root / "pair.yaml"
    config.write_text(yaml.safe_dump(small_config(split=PAIR_SPLIT).to_dict()))
    assert cli(["build", "--config", str(config), "--fold", "1", "--out", str(root / "f1")]) == 0
    return root / "f1"


def _pair_keys(dataset) -> set[tuple[str, str]]:
    return set(zip(dataset["perturbation"], dataset["cell_context"], strict=True))


def test_unseen_pair_fold_build(pair_fold_build):
    built = open_dataset_dir(pair_fold_build)
    splits, manifest = built.splits, built.manifest
    assert splits["kind"] == "unseen_pair" and splits["fold"] == 1 and splits["folds"] == 3
    assert manifest["split"]["fold"] == 1 and manifest["split"]["folds"] == 3
    test = {(r["perturbation"], r["cell_context"]) for r in splits["test_pairs"]}
    validation = {(r["perturbation"], r["cell_context"]) for r in splits["validation_pairs"]}
    assert manifest["split"]["test_pairs"] == splits["test_pairs"]
    assert {f"{p}@{c}" for p, c in test} == set(splits["fold_units"][1])
    assert len(validation) == 2 and not validation & test
    # 20 single pairs over 3 folds: 6 or 7 test pairs, never two of one perturbation
    assert len(test) in (6, 7) and len({p for p, _ in test}) == len(test)
    assert sorted(len(f) for f in splits["fold_units"]) == [6, 7, 7]
    assert all("+" not in p for p, _ in test)  # combinations follow their singles
    rl_train, sft_train = _pair_keys(built.rl["train"]), _pair_keys(built.sft["train"])
    assert _pair_keys(built.rl["test"]) == test
    assert _pair_keys(built.rl["validation"]) == validation
    assert not (test | validation) & (rl_train | sft_train)
    # the same perturbation in its other line is trained on
    assert {p for p, _ in test} <= {p for p, _ in rl_train}
    summary = check_no_leakage(built)
    assert summary["rl_rows"] > 0 and summary["pretrain_rows"] > 0


def _plant_chat(built, copy, text: str, context: str, perturbation: str = "") -> None:
    from datasets import Dataset, DatasetDict, concatenate_datasets

    row = dict(built.sft["train"][0])
    row.update(
        messages=[{"role": "user", "content": text}],
        perturbation=perturbation,
        cell_context=context,
        cell_ids=[],
    )
    train = concatenate_datasets(
        [built.sft["train"], Dataset.from_list([row], features=built.sft["train"].features)]
    )
    sft = DatasetDict({**{k: built.sft[k] for k in built.sft}, "train": train})
    _replace(sft, copy / "sft")


def test_unseen_pair_leakage_check_catches_planted_leaks(pair_fold_build, tmp_path):
    from datasets import Dataset, concatenate_datasets

    splits = open_dataset_dir(pair_fold_build).splits
    pert, context = (splits["test_pairs"][0][k] for k in ("perturbation", "cell_context"))
    other = next(
        r["cell_context"]
        for r in splits["groups"]["train"]
        if r["perturbation"] == pert and r["cell_context"] != context
    )
    target = pert.split("+")[0]
    cases = [
        (f"<pert> {target} </pert> in {context}?", context, "", "held-out pair"),
        ("a row", context, pert, f"held-out {pert!r} in {context!r}"),
        (f"<pert> {target} </pert> in {other}?", other, "", None),  # other line: allowed
        (f"<pert> {target} </pert> in {other}?", other, pert, None),
    ]
    val = splits["validation_pairs"][0]
    cases.append(
        (
            f"<pert> {val['perturbation'].split('+')[0]} </pert>",
            val["cell_context"],
            "",
            "held-out validation pair",
        )
    )
    for i, (text, where, label, fragment) in enumerate(cases):
        copy = tmp_path / f"leaky{i}"
        shutil.copytree(pair_fold_build, copy)
        _plant_chat(open_dataset_dir(copy), copy, text, where, label)
        if fragment is None:
            check_no_leakage(open_dataset_dir(copy))
        else:
            with pytest.raises(LeakageError, match=re.escape(fragment)):
                check_no_leakage(open_dataset_dir(copy))

    # pretraining text: the context comes from its cell_context prefix
    for where, leaks in ((context, True), (other, False)):
        copy = tmp_path / f"pretrain-{where}"
        shutil.copytree(pair_fold_build, copy)
        built = open_dataset_dir(copy)
        text = f"cell_context: {where}; perturbation: <pert> {target} </pert>; <cell> A B </cell>"
        planted = Dataset.from_dict(
            {"text": [text], "cell_id": ["planted"]}, features=built.pretrain.features
        )
        _replace(concatenate_datasets([built.pretrain, planted]), copy / "pretrain")
        if leaks:
            with pytest.raises(LeakageError, match="pretrain row .* held-out pair"):
                check_no_leakage(open_dataset_dir(copy))
        else:
            check_no_leakage(open_dataset_dir(copy))


def test_fold_flag_needs_folds(tmp_path, capsys):
    import yaml

    from cellrlhf.data.cli import cli

    config = tmp_path / "plain.yaml"
    config.write_text(yaml.safe_dump(small_config().to_dict()))
    assert cli(["build", "--config", str(config), "--fold", "1", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--fold 1 needs a config with split.folds" in err and "Add split.folds: K" in err
    assert not (tmp_path / "o").exists()
