"""The ``cellrlhf serve`` page: its components (:func:`build_page`) and which handler each event
runs (:func:`connect_events`).

The components' ``elem_id`` values are what the browser tests find them by; the order in which
components are created and events connected is the app's configuration (component ids, API
endpoint names such as ``select_from_box_1``), so both stay as they are.
"""

import types

import gradio as gr
import pandas as pd

from cellrlhf.chat.session import MAX_SAMPLES

__all__ = ["build_page", "connect_events"]


def _empty_map() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "row": pd.Series([], dtype=int),
            "cell": pd.Series([], dtype=str),
            "label": pd.Series([], dtype=str),
            "x": pd.Series([], dtype=float),
            "y": pd.Series([], dtype=float),
        }
    )


def _data_column(example: bool) -> dict:
    """Upload, example button, layer, the cell map and table, and the cell picker."""
    upload = gr.File(label="Upload .h5ad", file_types=[".h5ad"], type="filepath", elem_id="upload")
    example_btn = gr.Button("Use example cells", visible=example, elem_id="example-btn")
    layer = gr.Dropdown(label="Expression layer", choices=["X"], value="X")
    data_info = gr.Markdown("No data loaded.", elem_id="data-info")
    # no initial value: a plot created from an empty frame never draws later points
    scatter = gr.ScatterPlot(
        None, x="x", y="y", color="label", height=320, label="Cells (embedding)", elem_id="cell-map"
    )
    table = gr.Dataframe(
        headers=["row", "cell", "label"],
        interactive=False,
        max_height=260,
        label="Cells (click one)",
        elem_id="cell-table",
    )
    with gr.Row():
        cell_box = gr.Textbox(label="Cell index or name", scale=3, elem_id="cell-box")
        select_btn = gr.Button("Select", scale=1, elem_id="select-btn")
    cell_info = gr.Markdown("No cell selected.", elem_id="cell-info")
    return dict(
        upload=upload,
        example_btn=example_btn,
        layer=layer,
        data_info=data_info,
        scatter=scatter,
        table=table,
        cell_box=cell_box,
        select_btn=select_btn,
        cell_info=cell_info,
    )


def _chat_column() -> dict:
    """The chat: history, question box, ask and new-conversation buttons."""
    chatbot = gr.Chatbot(label="Chat", height=380, elem_id="chatbot")
    question = gr.Textbox(
        label="Question", placeholder="What cell type is this?", elem_id="question"
    )
    with gr.Row():
        ask_btn = gr.Button("Ask", variant="primary", elem_id="ask-btn")
        clear_btn = gr.Button("New conversation")
    return dict(chatbot=chatbot, question=question, ask_btn=ask_btn, clear_btn=clear_btn)


def _prediction_panel() -> dict:
    """The perturbation form and its results: summary, plot, genes table, download."""
    with gr.Accordion("Predict a perturbation", open=True):
        with gr.Row():
            targets = gr.Textbox(
                label="Targets", placeholder="KLF1 or KLF1+CEBPA", elem_id="targets"
            )
            context = gr.Textbox(
                label="Cell context (empty: the selected cell's)", elem_id="context"
            )
            ptype = gr.Textbox(label="Perturbation type (e.g. CRISPRa)")
            n_cells = gr.Slider(
                1, MAX_SAMPLES, value=8, step=1, label="Control cells to start from"
            )
        predict_btn = gr.Button("Predict", elem_id="predict-btn")
        prediction_info = gr.Markdown(elem_id="prediction-info")
        plot = gr.Plot(
            label="Predicted (and measured) change vs control",
            show_label=False,
            elem_id="response-plot",
        )
        genes_frame = gr.Dataframe(
            headers=["direction", "gene", "predicted", "measured"],
            label="Top changed genes (predicted population - control population)",
            interactive=False,
            elem_id="genes-table",
        )
        download = gr.File(label="Predicted AnnData (.h5ad)", elem_id="download")
    return dict(
        targets=targets,
        context=context,
        ptype=ptype,
        n_cells=n_cells,
        predict_btn=predict_btn,
        prediction_info=prediction_info,
        plot=plot,
        genes_frame=genes_frame,
        download=download,
    )


def build_page(name: str, lm, *, example: bool = True) -> types.SimpleNamespace:
    """Create the page's components inside the current :class:`gradio.Blocks`.

    Parameters
    ----------
    name
        The model's name in the heading.
    lm
        The model (its stage and vocabulary size are in the heading).
    example
        Show the "Use example cells" button.

    Returns
    -------
    types.SimpleNamespace
        The components by name, and the per-visitor states ``session_state``, ``roles_state``
        and ``map_state`` (the full cell map, which the table filter reads).
    """
    states = dict(
        session_state=gr.State(None), roles_state=gr.State(None), map_state=gr.State(_empty_map())
    )
    gr.Markdown(
        f"# Chat with `{name}`\n{lm.stage} model, {len(lm.vocab)} genes. Load cells, select "
        "one and ask about it, or predict how the control cells of a context respond to a "
        "perturbation (and compare with the data's measured cells, if it has them)."
    )
    with gr.Row():
        with gr.Column(scale=1):
            data = _data_column(example)
        with gr.Column(scale=2):
            chat = _chat_column()
            prediction = _prediction_panel()
    return types.SimpleNamespace(**states, **data, **chat, **prediction)


def connect_events(page: types.SimpleNamespace, handlers) -> None:
    """Run ``handlers``' methods (:class:`~cellrlhf.chat.web_handlers.AppHandlers`) on the
    events of ``page`` (from :func:`build_page`); call inside the same :class:`gradio.Blocks`."""
    p, h = page, handlers
    prediction_outputs = [p.plot, p.genes_frame, p.download, p.prediction_info]
    data_outputs = [p.session_state, p.roles_state, p.layer, p.data_info, p.scatter, p.table]
    data_outputs += [p.map_state, p.cell_info, p.chatbot, *prediction_outputs]
    p.upload.upload(h.load_upload, [p.upload, p.session_state], data_outputs)
    p.example_btn.click(h.load_example, [p.session_state], data_outputs)
    p.layer.change(h.set_layer, [p.layer, p.session_state], [p.session_state, p.cell_info])
    select_outputs = [p.session_state, p.cell_info, p.chatbot, p.cell_box]
    p.table.select(h.select_from_table, [p.session_state, p.roles_state, p.table], select_outputs)
    select_args = [p.session_state, p.roles_state, p.cell_box]
    p.select_btn.click(h.select_from_box, select_args, select_outputs)
    p.cell_box.submit(h.select_from_box, select_args, select_outputs)
    p.scatter.select(h.brush_map, [p.map_state], [p.table])
    ask_args = ([p.question, p.chatbot, p.session_state], [p.chatbot, p.question, p.session_state])
    p.ask_btn.click(h.ask, *ask_args)
    p.question.submit(h.ask, *ask_args)
    p.clear_btn.click(h.clear_chat, [p.session_state], [p.chatbot, p.session_state])
    p.predict_btn.click(
        h.predict,
        [p.targets, p.context, p.ptype, p.n_cells, p.session_state, p.roles_state],
        [*prediction_outputs, p.session_state],
    )
