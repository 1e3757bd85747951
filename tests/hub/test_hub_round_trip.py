"""Push plan -> repository -> load gives the same model: locally and through the HF cache."""

from __future__ import annotations

import numpy as np
import pytest

CELLS = [0, 120, 300, 450]


@pytest.fixture(scope="module")
def pbmc():
    pytest.importorskip("scanpy")
    from cellrlhf.chat.example_data import example_cells

    return example_cells()[CELLS]


def _outputs(lm, cells):
    table = lm.annotate(cells)
    pred = lm.predict_perturbation(cells[:2], "SPI1", cell_context="Dendritic")
    generated = lm.generate_cells("CD19+ B", n=3, seed=5)
    return table, pred, generated


def _assert_same(a, b):
    (ta, pa, ga), (tb, pb, gb) = a, b
    assert list(ta["answer"]) == list(tb["answer"])
    np.testing.assert_allclose(ta["score"], tb["score"], rtol=1e-6)
    assert pa.answers == pb.answers
    np.testing.assert_array_equal(pa.adata.X.toarray(), pb.adata.X.toarray())
    assert list(ga.obs["cell_sentence"]) == list(gb.obs["cell_sentence"])


@pytest.fixture(scope="module")
def reference(tiny_model_dir, pbmc):
    from cellrlhf.chat import CellLM

    return _outputs(CellLM.from_pretrained(tiny_model_dir), pbmc)


def test_the_planned_commit_loads_to_an_identical_model(tiny_model_dir, pbmc, reference, tmp_path):
    from cellrlhf.chat import CellLM
    from cellrlhf.hub.upload_plan import plan_model_upload

    plan = plan_model_upload(tiny_model_dir, repo_id="me/tiny-cells")
    assert "model.safetensors" in plan.paths and "README.md" in plan.paths
    assert "tokenizer.json" in plan.paths and "chat_template.jinja" in plan.paths
    repo = plan.materialize(tmp_path / "repo")
    _assert_same(reference, _outputs(CellLM.from_pretrained(repo), pbmc))


def test_hub_id_loads_from_the_standard_cache_offline(
    tiny_model_dir, pbmc, reference, tmp_path, monkeypatch
):
    """A Hub download lands in HF_HUB_CACHE as models--org--name/snapshots/<commit>/; offline,
    ``from_pretrained("org/name")`` must read exactly that snapshot."""
    from cellrlhf.chat import CellLM
    from cellrlhf.hub.upload_plan import plan_model_upload

    cache = tmp_path / "hf_cache"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = cache / "models--me--tiny-cells"
    plan = plan_model_upload(tiny_model_dir, repo_id="me/tiny-cells")
    plan.materialize(repo_dir / "snapshots" / commit)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lm = CellLM.from_pretrained("me/tiny-cells", cache_dir=cache)
    assert lm.path == repo_dir / "snapshots" / commit
    _assert_same(reference, _outputs(lm, pbmc))


def test_unknown_hub_id_offline_is_a_clear_error(tmp_path, monkeypatch):
    from cellrlhf.chat import CellLM

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="not in the Hugging Face cache"):
        CellLM.from_pretrained("me/never-downloaded", cache_dir=tmp_path)


def test_space_app_builds_the_chat_app_from_the_cache(tiny_model_dir, tmp_path, monkeypatch):
    """The generated Space ``app.py``, run as the Space would import it, loads the model by Hub
    id (here from the offline cache) and builds the gradio app."""
    import runpy

    pytest.importorskip("gradio")
    import gradio as gr

    from cellrlhf.hub.space import plan_space_upload
    from cellrlhf.hub.upload_plan import plan_model_upload

    cache = tmp_path / "hf_cache"
    commit = "fedcba9876543210fedcba9876543210fedcba98"
    repo_dir = cache / "models--me--tiny-cells"
    plan_model_upload(tiny_model_dir, repo_id="me/tiny-cells").materialize(
        repo_dir / "snapshots" / commit
    )
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    space = plan_space_upload("me/tiny-cells").materialize(tmp_path / "space")
    namespace = runpy.run_path(str(space / "app.py"), run_name="space_app")
    assert isinstance(namespace["demo"], gr.Blocks)
    assert namespace["lm"].path == repo_dir / "snapshots" / commit
