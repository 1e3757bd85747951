"""``cellrlhf serve``: a gradio app to chat with a model about cells.

Upload an ``.h5ad`` (or use the example cells), pick a cell on the map or in the table, ask about
it, and predict how the control cells of a context respond to a perturbation: the predicted
population against the control population, the measured response beside it when the data has
cells with that perturbation (with the evaluation's metrics), and the predicted AnnData to
download (:mod:`cellrlhf.chat.population`). The same app runs as a Hugging Face
Space (``app.py``: ``build_app(CellLM.from_pretrained(...)).launch()``).

Safety: the server binds 127.0.0.1 unless ``--host`` says otherwise (another host prints a
warning; ``--auth USER:PASS`` or ``CELLRLHF_SERVE_AUTH`` asks for a login), uploads are capped
(``--max-upload-mb``), and only files gradio itself received as uploads are read: a path sent by
the client is never opened. Each session's predictions are written to its own temporary folder,
and :func:`launch_app` serves a prediction file to the client that made it only
(:mod:`cellrlhf.chat.web_security`).
"""

import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cellrlhf.chat.model_args import add_model_arguments, load_model_from_args
from cellrlhf.chat.web_security import AUTH_ENV, is_loopback, parse_auth

__all__ = ["build_app", "launch_app", "cli", "UploadRejected"]

logger = logging.getLogger(__name__)

_TABLE_ROWS = 200


class UploadRejected(ValueError):
    """An upload that is not a file gradio received, or not an .h5ad."""


def _checked_upload(path: str | None, upload_dir: str | Path) -> Path:
    """``path`` if it is a regular ``.h5ad`` file inside gradio's upload folder."""
    if not path:
        raise UploadRejected("no file received.")
    text = str(path)
    if "://" in text:
        raise UploadRejected("only uploaded files are read, not URLs.")
    resolved = Path(text).resolve()
    root = Path(upload_dir).resolve()
    if root not in resolved.parents:
        raise UploadRejected("only files uploaded through this page are read.")
    if resolved.suffix.lower() != ".h5ad" or not resolved.is_file():
        raise UploadRejected("upload an AnnData .h5ad file.")
    return resolved


def build_app(
    lm,
    *,
    title: str | None = None,
    example: bool = True,
    max_new_tokens: int = 512,
    upload_dir: str | Path | None = None,
    downloads=None,
):
    """The gradio :class:`~gradio.Blocks` app for ``lm`` (a :class:`~cellrlhf.chat.CellLM`).

    Parameters
    ----------
    lm
        The model, shared by all visitors (generation requests are queued one at a time).
    title
        Page title (default: the model's directory name).
    example
        Offer the example cells (scanpy's pbmc68k_reduced).
    max_new_tokens
        Token budget of chat answers.
    upload_dir
        Gradio's upload folder (default: gradio's own); uploads outside it are refused.
    downloads
        The :class:`~cellrlhf.chat.web_security.DownloadOwners` that records which client made
        which prediction file (default: a new one, as ``demo.downloads``); :func:`launch_app`
        enforces it.
    """
    import gradio as gr
    import pandas as pd

    from cellrlhf.chat.example_data import EXAMPLE_NAME, example_cells
    from cellrlhf.chat.population import (
        choose_context,
        data_roles,
        overlap_warning,
        predict_from_controls,
    )
    from cellrlhf.chat.session import MAX_SAMPLES, ChatSession, check_count
    from cellrlhf.chat.web_views import (
        cell_map,
        genes_table,
        prediction_summary,
        response_figure,
        roles_text,
    )

    if upload_dir is None:
        from gradio.utils import get_upload_folder

        upload_dir = get_upload_folder()
    from cellrlhf.chat.web_security import DownloadOwners

    name = title or (lm.path.name if lm.path else "cell language model")
    downloads = downloads if downloads is not None else DownloadOwners()
    download_root = Path(tempfile.mkdtemp(prefix="cellrlhf-serve-"))
    empty_map = pd.DataFrame(
        {
            "row": pd.Series([], dtype=int),
            "cell": pd.Series([], dtype=str),
            "label": pd.Series([], dtype=str),
            "x": pd.Series([], dtype=float),
            "y": pd.Series([], dtype=float),
        }
    )

    def _message(err: BaseException) -> str:
        return str(err.args[0] if isinstance(err, KeyError) and err.args else err)

    def _warn(message: str, n_outputs: int):
        """Tell the user what went wrong (a toast) and leave every output as it is."""
        gr.Warning(message)
        return tuple(gr.skip() for _ in range(n_outputs)) if n_outputs > 1 else gr.skip()

    def _data_outputs(session: ChatSession, source: str):
        adata = session.adata
        table = cell_map(adata, layer=session.layer)
        layers = ["X", *adata.layers.keys()]
        roles = data_roles(adata, lm, layer=session.layer, name=source)
        info = (
            f"**{source}**: {adata.n_obs} cells x {adata.n_vars} genes. {roles_text(roles)} "
            "Click a cell in the table (or type its index or name) to select it; brush the map "
            "to filter the table."
        )
        low = overlap_warning(roles)
        if low:
            gr.Warning(low)
            info = f"**Warning: {low}**\n\n{info}"
        no_prediction = (None, None, None, "")
        return (
            session,
            roles,
            gr.update(choices=layers, value=session.layer or "X"),
            info,
            table,
            table.head(_TABLE_ROWS)[["row", "cell", "label"]],
            table,
            "No cell selected.",
            [],
            *no_prediction,
        )

    n_data_outputs = 13

    def load_upload(path, session):
        try:
            file = _checked_upload(path, upload_dir)
            import anndata as ad

            adata = ad.read_h5ad(file)
            new_session = ChatSession(lm, adata)
        except (UploadRejected, OSError, ValueError, KeyError) as err:
            return _warn(f"cannot read the upload: {_message(err)}", n_data_outputs)
        return _data_outputs(new_session, Path(str(path)).name)

    def load_example(session):
        try:
            adata = example_cells()
        except ImportError as err:
            return _warn(str(err), n_data_outputs)
        return _data_outputs(ChatSession(lm, adata), EXAMPLE_NAME)

    def set_layer(layer, session):
        if session is None:
            return session, gr.skip()
        session.layer = None if layer in (None, "X") else layer
        session.cell = None
        return session, "No cell selected."

    def _select(session, roles, key):
        if session is None:
            return _warn("load data first: upload an .h5ad or use the example cells.", 4)
        try:
            cell = session.select_cell(key)
        except (LookupError, ValueError) as err:
            return _warn(_message(err), 4)
        obs = session.adata.obs.iloc[cell.index]
        details = ", ".join(f"{k}: {v}" for k, v in list(obs.items())[:4])
        info = (
            f"**Selected cell {cell.cell_id}** (row {cell.index}; {details})  \n"
            f"{cell.n_genes} expressed genes the model knows: `{cell.preview(12)}`"
        )
        if roles is not None and not roles.is_control(obs.to_frame().T)[0]:
            info = (
                f"**Warning: this cell is not a control** ({roles.perturbation}: "
                f"{obs[roles.perturbation]}). Predictions start from the control cells of its "
                f"context, not from this cell.\n\n{info}"
            )
        return session, info, [], str(cell.index)

    def select_from_table(session, roles, table, evt: gr.SelectData):
        if table is None or evt.index is None:
            return tuple(gr.skip() for _ in range(4))
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        value = table.iloc[int(row)]["row"]
        return _select(session, roles, int(value))

    def select_from_box(session, roles, key):
        return _select(session, roles, str(key))

    def brush_map(full_map, evt: gr.SelectData):
        if full_map is None or len(full_map) == 0:
            return gr.skip()
        lo, hi = (float(v) for v in evt.index[:2])
        shown = full_map[(full_map["x"] >= lo) & (full_map["x"] <= hi)]
        return shown.head(_TABLE_ROWS)[["row", "cell", "label"]]

    def ask(question, history, session):
        question = (question or "").strip()
        if not question:
            yield _warn("type a question.", 3)
            return
        if session is None:
            session = ChatSession(lm)
        history = [*history, {"role": "user", "content": question}]
        answer = ""
        try:
            for piece in session.ask(question, max_new_tokens=max_new_tokens):
                answer += piece
                yield [*history, {"role": "assistant", "content": answer}], "", session
        except ValueError as err:
            yield _warn(_message(err), 3)
            return
        yield [*history, {"role": "assistant", "content": answer or "(empty answer)"}], "", session

    def clear_chat(session):
        if session is not None:
            session.clear()
        return [], session

    def _offer_download(prediction, request) -> str:
        """Write ``prediction`` into the session's own folder, copy it into gradio's cache and
        let only the requesting client fetch it."""
        from gradio.processing_utils import save_file_to_cache

        from cellrlhf.chat.web_security import client_id

        session_key = "".join(c for c in str(getattr(request, "session_hash", "")) if c.isalnum())
        folder = download_root / (session_key[:64] or "no-session")
        folder.mkdir(parents=True, exist_ok=True)
        out_dir = Path(tempfile.mkdtemp(dir=folder))
        safe = "".join(c if c.isalnum() or c in "+-_" else "_" for c in prediction.perturbation)
        path = prediction.write(out_dir / f"prediction_{safe}.h5ad")
        cached = save_file_to_cache(path, str(upload_dir))
        client = client_id(request)
        if client is not None:
            downloads.grant(cached, client)
        return cached

    def predict(targets, context, ptype, n_cells, session, roles, request: gr.Request):
        if session is None or session.adata is None or roles is None:
            return _warn("load data first: predictions start from the data's control cells.", 5)
        try:
            chosen = choose_context(
                session.adata,
                roles,
                (context or "").strip() or None,
                session.cell.index if session.cell is not None else None,
            )
            check_count("control cells", int(n_cells or 1), MAX_SAMPLES)
            result = predict_from_controls(
                lm,
                session.adata,
                roles,
                targets or "",
                context=chosen,
                n_cells=int(n_cells or 1),
                perturbation_type=(ptype or "").strip() or None,
                layer=session.layer,
            )
        except (ValueError, KeyError) as err:
            return _warn(_message(err), 5)
        session.last_prediction = result.prediction
        session.last_result = result.prediction.adata
        summary = prediction_summary(result)
        if result.invalid:
            return None, None, None, summary, session
        path = _offer_download(result.prediction, request)
        return response_figure(result), genes_table(result), str(path), summary, session

    with gr.Blocks(title=f"cellrlhf: {name}") as demo:
        session_state = gr.State(None)
        roles_state = gr.State(None)
        map_state = gr.State(empty_map)
        gr.Markdown(
            f"# Chat with `{name}`\n{lm.stage} model, {len(lm.vocab)} genes. Load cells, select "
            "one and ask about it, or predict how the control cells of a context respond to a "
            "perturbation (and compare with the data's measured cells, if it has them)."
        )
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(
                    label="Upload .h5ad", file_types=[".h5ad"], type="filepath", elem_id="upload"
                )
                example_btn = gr.Button("Use example cells", visible=example, elem_id="example-btn")
                layer = gr.Dropdown(label="Expression layer", choices=["X"], value="X")
                data_info = gr.Markdown("No data loaded.", elem_id="data-info")
                # no initial value: a plot created from an empty frame never draws later points
                scatter = gr.ScatterPlot(
                    None,
                    x="x",
                    y="y",
                    color="label",
                    height=320,
                    label="Cells (embedding)",
                    elem_id="cell-map",
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
            with gr.Column(scale=2):
                chatbot = gr.Chatbot(label="Chat", height=380, elem_id="chatbot")
                question = gr.Textbox(
                    label="Question", placeholder="What cell type is this?", elem_id="question"
                )
                with gr.Row():
                    ask_btn = gr.Button("Ask", variant="primary", elem_id="ask-btn")
                    clear_btn = gr.Button("New conversation")
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

        prediction_outputs = [plot, genes_frame, download, prediction_info]
        data_outputs = [
            session_state,
            roles_state,
            layer,
            data_info,
            scatter,
            table,
            map_state,
            cell_info,
            chatbot,
            *prediction_outputs,
        ]
        upload.upload(load_upload, [upload, session_state], data_outputs)
        example_btn.click(load_example, [session_state], data_outputs)
        layer.change(set_layer, [layer, session_state], [session_state, cell_info])
        select_outputs = [session_state, cell_info, chatbot, cell_box]
        table.select(select_from_table, [session_state, roles_state, table], select_outputs)
        select_args = [session_state, roles_state, cell_box]
        select_btn.click(select_from_box, select_args, select_outputs)
        cell_box.submit(select_from_box, select_args, select_outputs)
        scatter.select(brush_map, [map_state], [table])
        ask_args = ([question, chatbot, session_state], [chatbot, question, session_state])
        ask_btn.click(ask, *ask_args)
        question.submit(ask, *ask_args)
        clear_btn.click(clear_chat, [session_state], [chatbot, session_state])
        predict_btn.click(
            predict,
            [targets, context, ptype, n_cells, session_state, roles_state],
            [*prediction_outputs, session_state],
        )
    demo.queue(default_concurrency_limit=1)
    demo.downloads = downloads
    return demo


def launch_app(
    demo,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    max_upload_mb: float = 500,
    auth: list[tuple[str, str]] | None = None,
    **launch_kwargs,
):
    """Serve ``demo`` (from :func:`build_app`) with the download guard and optional login.

    Every client gets its own cookie, and a prediction file is served to the client that made
    it only (:class:`~cellrlhf.chat.web_security.ClientGuard`). ``auth``: gradio's login
    (``[(user, password), ...]``). Other keyword arguments go to gradio's ``launch``.
    """
    from starlette.middleware import Middleware

    from cellrlhf.chat.web_security import ClientGuard, DownloadOwners

    owners = getattr(demo, "downloads", None) or DownloadOwners()
    return demo.launch(
        server_name=host,
        server_port=port,
        max_file_size=int(max_upload_mb * 2**20),
        share=False,
        auth=auth,
        app_kwargs={"middleware": [Middleware(ClientGuard, owners=owners)]},
        **{"show_error": True, **launch_kwargs},
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cellrlhf serve", description="Serve a web app to chat with a model about cells."
    )
    add_model_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument(
        "--auth",
        default=None,
        metavar="USER:PASSWORD",
        help="ask for a login (several as u1:p1,u2:p2); better from the environment variable "
        f"{AUTH_ENV}, which other users cannot read in the process list. Advised with --host",
    )
    p.add_argument("--max-upload-mb", type=float, default=500, help="largest accepted upload")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--no-example", action="store_true", help="hide the example cells")
    return p


def cli(argv: Sequence[str] | None = None) -> int:
    """``cellrlhf serve``: returns the process exit status."""
    args = _parser().parse_args(argv)
    try:
        auth = parse_auth(args.auth, source="--auth") or parse_auth(
            os.environ.get(AUTH_ENV), source=AUTH_ENV
        )
    except ValueError as err:
        print(f"cellrlhf serve: {err}", file=sys.stderr)
        return 2
    warning = _host_warning(args.host, auth)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("cellrlhf serve needs gradio: pip install 'cellrlhf[chat]'", file=sys.stderr)
        return 2
    try:
        lm = load_model_from_args(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"cellrlhf serve: {err}", file=sys.stderr)
        return 2
    demo = build_app(lm, example=not args.no_example, max_new_tokens=args.max_new_tokens)
    launch_app(demo, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb, auth=auth)
    return 0


def _host_warning(host: str, auth) -> str | None:
    """What to tell the user about binding ``host`` (``None`` for a loopback address)."""
    if is_loopback(host):
        return None
    if auth:
        return (
            f"cellrlhf serve: binding {host}: the app is reachable from other machines; a login "
            "is required. Put it behind HTTPS (a reverse proxy) so passwords do not travel in "
            "clear text."
        )
    return (
        f"cellrlhf serve: WARNING: binding {host}: the app is reachable from other machines and "
        f"has no login: anyone who can reach it can use the model. Set {AUTH_ENV}=USER:PASSWORD "
        "(or --auth) to require a login, or bind 127.0.0.1."
    )
