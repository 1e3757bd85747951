"""``cellrlhf serve``: the app's events (its HTTP API) and each handler's outputs, without a
server or a browser: the handlers are called the way gradio calls them."""

from __future__ import annotations

import types

import pytest

from tests.fixtures.tiny_cell_model import TARGETS

SKIP = {"__type__": "update"}  # gr.skip(): the output is left as it is
DATA_OUTPUTS = [
    "State", "State", "Expression layer", "data-info", "cell-map", "cell-table", "State",
    "cell-info", "chatbot", "response-plot", "genes-table", "download", "prediction-info",
]  # fmt: skip
SELECT_INPUTS, SELECT_OUTPUTS = ["State", "State", "cell-box"], [
    "State", "cell-info", "chatbot", "cell-box"
]  # fmt: skip
ASK = (["question", "chatbot", "State"], ["chatbot", "question", "State"])
EVENTS = [
    ("load_upload", [("upload", "upload")], ["upload", "State"], DATA_OUTPUTS),
    ("load_example", [("example-btn", "click")], ["State"], DATA_OUTPUTS),
    ("set_layer", [("Expression layer", "change")], ["Expression layer", "State"],
     ["State", "cell-info"]),
    ("select_from_table", [("cell-table", "select")], ["State", "State", "cell-table"],
     SELECT_OUTPUTS),
    ("select_from_box", [("select-btn", "click")], SELECT_INPUTS, SELECT_OUTPUTS),
    ("select_from_box_1", [("cell-box", "submit")], SELECT_INPUTS, SELECT_OUTPUTS),
    ("brush_map", [("cell-map", "select")], ["State"], ["cell-table"]),
    ("ask", [("ask-btn", "click")], *ASK),
    ("ask_1", [("question", "submit")], *ASK),
    ("clear_chat", [("Button", "click")], ["State"], ["chatbot", "State"]),
    ("predict", [("predict-btn", "click")],
     ["targets", "context", "Perturbation type (e.g. CRISPRa)", "Control cells to start from",
      "State", "State"],
     ["response-plot", "genes-table", "download", "prediction-info", "State"]),
]  # fmt: skip


@pytest.fixture(scope="module")
def app(lm, tmp_path_factory):
    pytest.importorskip("gradio")
    from cellrlhf.chat.web import build_app

    uploads = tmp_path_factory.mktemp("gradio-uploads")
    demo = build_app(lm, max_new_tokens=24, upload_dir=uploads)
    handlers = {f.api_name: f.fn for f in demo.fns.values()}
    return types.SimpleNamespace(demo=demo, uploads=uploads, fn=handlers)


@pytest.fixture
def loaded(app):
    """The outputs of "Use example cells" (a new session)."""
    return app.fn["load_example"](None)


def _name(demo, block_id: int) -> str:
    block = demo.blocks[block_id]
    return getattr(block, "elem_id", None) or getattr(block, "label", None) or type(block).__name__


def test_every_event_its_api_name_inputs_and_outputs(app):
    config = app.demo.get_config_file()
    found = [
        (
            dep["api_name"],
            [(_name(app.demo, t[0]), t[1]) for t in dep["targets"]],
            [_name(app.demo, i) for i in dep["inputs"]],
            [_name(app.demo, i) for i in dep["outputs"]],
        )
        for dep in config["dependencies"]
    ]
    assert found == EVENTS
    assert all(dep["queue"] for dep in config["dependencies"])
    assert config["title"] == "cellrlhf: tiny_cell_model"


def test_load_example_fills_every_data_output(loaded, pbmc):
    from cellrlhf.chat.example_data import EXAMPLE_NAME

    session, roles, layer, info, scatter, table, full_map, cell_info, chat, *prediction = loaded
    assert session.adata.n_obs == 700 and roles is not None
    assert layer["choices"] == ["X", *pbmc.layers.keys()] and layer["value"] == "X"
    assert info.startswith(f"**{EXAMPLE_NAME}**: 700 cells x 765 genes. No perturbation column")
    assert info.endswith("brush the map to filter the table.")
    assert list(scatter.columns) == ["row", "cell", "label", "x", "y"] and len(scatter) == 700
    assert list(table.columns) == ["row", "cell", "label"] and len(table) == 200
    assert full_map is scatter
    assert (cell_info, chat, prediction) == ("No cell selected.", [], [None, None, None, ""])


def test_load_upload_reads_only_gradios_uploads(app, pbmc, tmp_path):
    outside = tmp_path / "cells.h5ad"
    pbmc[:30].write_h5ad(outside)
    with pytest.warns(UserWarning, match="cannot read the upload: only files uploaded through"):
        assert app.fn["load_upload"](str(outside), None) == (SKIP,) * 13
    with pytest.warns(UserWarning, match="cannot read the upload: no file received."):
        app.fn["load_upload"](None, None)
    inside = app.uploads / "abc" / "mine.h5ad"
    inside.parent.mkdir(exist_ok=True)
    pbmc[:30].write_h5ad(inside)
    outputs = app.fn["load_upload"](str(inside), None)
    assert outputs[0].adata.n_obs == 30 and outputs[3].startswith("**mine.h5ad**: 30 cells x 765")


def test_set_layer_forgets_the_selected_cell(app, loaded):
    assert app.fn["set_layer"]("X", None) == (None, SKIP)
    session = loaded[0]
    session.layer = "counts"
    assert app.fn["set_layer"]("X", session) == (session, "No cell selected.")
    assert session.layer is None and session.cell is None


def test_select_a_cell_by_box_and_table(app, loaded, pbmc):
    session, roles, table = loaded[0], loaded[1], loaded[5]
    with pytest.warns(UserWarning, match="load data first: upload an .h5ad or use the example"):
        assert app.fn["select_from_box"](None, None, "3") == (SKIP,) * 4
    with pytest.warns(UserWarning, match="no cell named 'NOPE'"):
        assert app.fn["select_from_box"](session, roles, "NOPE") == (SKIP,) * 4
    out_session, info, chat, box = app.fn["select_from_box"](session, roles, "3")
    assert out_session is session and session.cell.index == 3 and (chat, box) == ([], "3")
    assert info.startswith(f"**Selected cell {pbmc.obs_names[3]}** (row 3; ")
    assert "expressed genes the model knows: `" in info and "not a control" not in info
    gr = pytest.importorskip("gradio")
    event = gr.SelectData(None, {"index": [5, 1], "value": "x"})
    _, info, _, box = app.fn["select_from_table"](session, roles, table, event)
    assert box == "5" and f"**Selected cell {pbmc.obs_names[5]}** (row 5; " in info
    nothing = gr.SelectData(None, {"index": None, "value": None})
    assert app.fn["select_from_table"](session, roles, table, nothing) == (SKIP,) * 4


def test_brush_map_filters_the_table(app, loaded):
    gr = pytest.importorskip("gradio")
    full_map = loaded[6]
    lo, hi = sorted(full_map["x"].quantile([0.2, 0.3]))
    shown = app.fn["brush_map"](full_map, gr.SelectData(None, {"index": [lo, hi], "value": 0}))
    inside = full_map[(full_map["x"] >= lo) & (full_map["x"] <= hi)]
    assert shown.equals(inside.head(200)[["row", "cell", "label"]]) and 0 < len(shown) < 700
    assert app.fn["brush_map"](full_map.head(0), None) == SKIP


def test_ask_streams_then_clear_chat(app, loaded):
    session = loaded[0]
    session.select_cell("3")
    with pytest.warns(UserWarning, match="type a question."):
        assert list(app.fn["ask"]("  ", [], session)) == [(SKIP,) * 3]
    steps = list(app.fn["ask"]("What cell type is this cell?", [], session))
    history, box, out_session = steps[-1]
    assert (box, out_session) == ("", session) and len(steps) >= 2
    assert history[0] == {"role": "user", "content": "What cell type is this cell?"}
    assert history[1]["role"] == "assistant" and history[1]["content"].strip()
    assert len(session.messages) == 2
    assert app.fn["clear_chat"](session) == ([], session) and session.messages == []
    assert app.fn["clear_chat"](None) == ([], None)


def test_predict_needs_data_and_offers_the_prediction(app, loaded):
    session, roles = loaded[0], loaded[1]
    with pytest.warns(UserWarning, match="load data first: predictions start from the data's"):
        assert app.fn["predict"](TARGETS[0], "", "", 2, None, None, None) == (SKIP,) * 5
    with pytest.warns(UserWarning, match=r"control cells=10000 is out of range: give 1..16"):
        app.fn["predict"](TARGETS[0], "CD19+ B", "", 10_000, session, roles, None)
    with pytest.warns(UserWarning, match="choose a cell context .or select a cell."):
        app.fn["predict"](TARGETS[0], "", "", 2, session, roles, None)
    session.select_cell("3")
    from cellrlhf.chat.web_security import CLIENT_COOKIE

    client = "c" * 32
    raw = types.SimpleNamespace(cookies={CLIENT_COOKIE: client})
    request = types.SimpleNamespace(session_hash="abc/../1", request=raw)
    figure, genes, path, summary, out_session = app.fn["predict"](
        TARGETS[0], "", "", 2, session, roles, request
    )
    assert out_session is session and session.last_prediction.perturbation == TARGETS[0]
    assert path.endswith(f"prediction_{TARGETS[0]}.h5ad") and str(app.uploads) in path
    assert summary.startswith(f"**{TARGETS[0]}** in ") and "Valid gene fraction" in summary
    assert figure is not None and len(genes) > 0
    downloads = app.demo.downloads
    assert downloads.allowed(path, client) and not downloads.allowed(path, "d" * 32)
