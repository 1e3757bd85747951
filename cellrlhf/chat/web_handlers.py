"""What each event of the ``cellrlhf serve`` page does (:func:`cellrlhf.chat.web.build_app`).

One :class:`AppHandlers` per app holds what the events share (the model, gradio's upload folder,
the download owners, the folder of prediction files); each public method is one event's handler,
named like its HTTP API endpoint (``load_upload``, ``predict``, ...). A handler that cannot do
what was asked shows a warning toast and leaves every output as it is.

Gradio reads the handlers' annotations (``gr.SelectData``, ``gr.Request``) to pass the event and
the request, so this module imports gradio at import time: import it only where gradio is needed.
"""

import tempfile
from pathlib import Path

import gradio as gr

from cellrlhf.chat.example_data import EXAMPLE_NAME, example_cells
from cellrlhf.chat.population import (
    choose_context,
    data_roles,
    overlap_warning,
    predict_from_controls,
)
from cellrlhf.chat.session import MAX_SAMPLES, ChatSession, check_count
from cellrlhf.chat.web import UploadRejected, _checked_upload
from cellrlhf.chat.web_security import client_id
from cellrlhf.chat.web_views import (
    cell_map,
    genes_table,
    prediction_summary,
    response_figure,
    roles_text,
)

__all__ = ["AppHandlers", "N_DATA_OUTPUTS", "TABLE_ROWS"]

TABLE_ROWS = 200  # cells shown in the table (the map shows all)
N_DATA_OUTPUTS = 13  # outputs of loading data: the page's data, cell, chat and prediction


def _message(err: BaseException) -> str:
    return str(err.args[0] if isinstance(err, KeyError) and err.args else err)


def _warn(message: str, n_outputs: int):
    """Tell the user what went wrong (a toast) and leave every output as it is."""
    gr.Warning(message)
    return tuple(gr.skip() for _ in range(n_outputs)) if n_outputs > 1 else gr.skip()


class AppHandlers:
    """The event handlers of one app.

    Parameters
    ----------
    lm
        The :class:`~cellrlhf.chat.CellLM` shared by all visitors.
    upload_dir
        Gradio's upload folder: uploads outside it are refused, prediction files are cached in it.
    downloads
        The :class:`~cellrlhf.chat.web_security.DownloadOwners` told which client made which
        prediction file.
    max_new_tokens
        Token budget of chat answers.

    Notes
    -----
    Loading data (``load_upload``, ``load_example``) returns the :data:`N_DATA_OUTPUTS` outputs
    session, roles, layer choices, data text, map, table, full map, cell text, chat and the four
    prediction outputs. Selecting a cell (``select_from_table``, ``select_from_box``) returns
    session, cell text, chat and cell box; ``ask`` streams (chat, question box, session);
    ``predict`` returns figure, genes table, download, summary and session. Each session's
    prediction files are written to its own temporary folder.
    """

    def __init__(self, lm, *, upload_dir: str | Path, downloads, max_new_tokens: int = 512):
        self.lm = lm
        self.upload_dir = upload_dir
        self.downloads = downloads
        self.max_new_tokens = max_new_tokens
        self.download_root = Path(tempfile.mkdtemp(prefix="cellrlhf-serve-"))

    # ------------------------------------------------------------------ data
    def _data_outputs(self, session: ChatSession, source: str):
        adata = session.adata
        table = cell_map(adata, layer=session.layer)
        layers = ["X", *adata.layers.keys()]
        roles = data_roles(adata, self.lm, layer=session.layer, name=source)
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
            table.head(TABLE_ROWS)[["row", "cell", "label"]],
            table,
            "No cell selected.",
            [],
            *no_prediction,
        )

    def load_upload(self, path, session):
        try:
            file = _checked_upload(path, self.upload_dir)
            import anndata as ad

            adata = ad.read_h5ad(file)
            new_session = ChatSession(self.lm, adata)
        except (UploadRejected, OSError, ValueError, KeyError) as err:
            return _warn(f"cannot read the upload: {_message(err)}", N_DATA_OUTPUTS)
        return self._data_outputs(new_session, Path(str(path)).name)

    def load_example(self, session):
        try:
            adata = example_cells()
        except ImportError as err:
            return _warn(str(err), N_DATA_OUTPUTS)
        return self._data_outputs(ChatSession(self.lm, adata), EXAMPLE_NAME)

    def set_layer(self, layer, session):
        if session is None:
            return session, gr.skip()
        session.layer = None if layer in (None, "X") else layer
        session.cell = None
        return session, "No cell selected."

    # ------------------------------------------------------------------ cells
    def _select(self, session, roles, key):
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

    def select_from_table(self, session, roles, table, evt: gr.SelectData):
        if table is None or evt.index is None:
            return tuple(gr.skip() for _ in range(4))
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        value = table.iloc[int(row)]["row"]
        return self._select(session, roles, int(value))

    def select_from_box(self, session, roles, key):
        return self._select(session, roles, str(key))

    def brush_map(self, full_map, evt: gr.SelectData):
        if full_map is None or len(full_map) == 0:
            return gr.skip()
        lo, hi = (float(v) for v in evt.index[:2])
        shown = full_map[(full_map["x"] >= lo) & (full_map["x"] <= hi)]
        return shown.head(TABLE_ROWS)[["row", "cell", "label"]]

    # ------------------------------------------------------------------ chat
    def ask(self, question, history, session):
        question = (question or "").strip()
        if not question:
            yield _warn("type a question.", 3)
            return
        if session is None:
            session = ChatSession(self.lm)
        history = [*history, {"role": "user", "content": question}]
        answer = ""
        try:
            for piece in session.ask(question, max_new_tokens=self.max_new_tokens):
                answer += piece
                yield [*history, {"role": "assistant", "content": answer}], "", session
        except ValueError as err:
            yield _warn(_message(err), 3)
            return
        yield [*history, {"role": "assistant", "content": answer or "(empty answer)"}], "", session

    def clear_chat(self, session):
        if session is not None:
            session.clear()
        return [], session

    # ------------------------------------------------------------------ predictions
    def _offer_download(self, prediction, request) -> str:
        """Write ``prediction`` into the session's own folder, copy it into gradio's cache and
        let only the requesting client fetch it."""
        from gradio.processing_utils import save_file_to_cache

        session_key = "".join(c for c in str(getattr(request, "session_hash", "")) if c.isalnum())
        folder = self.download_root / (session_key[:64] or "no-session")
        folder.mkdir(parents=True, exist_ok=True)
        out_dir = Path(tempfile.mkdtemp(dir=folder))
        safe = "".join(c if c.isalnum() or c in "+-_" else "_" for c in prediction.perturbation)
        path = prediction.write(out_dir / f"prediction_{safe}.h5ad")
        cached = save_file_to_cache(path, str(self.upload_dir))
        client = client_id(request)
        if client is not None:
            self.downloads.grant(cached, client)
        return cached

    def _predict_result(self, targets, context, ptype, n_cells, session, roles):
        """The population prediction the form asks for (``ValueError``/``KeyError`` if it
        cannot be made)."""
        chosen = choose_context(
            session.adata,
            roles,
            (context or "").strip() or None,
            session.cell.index if session.cell is not None else None,
        )
        check_count("control cells", int(n_cells or 1), MAX_SAMPLES)
        return predict_from_controls(
            self.lm,
            session.adata,
            roles,
            targets or "",
            context=chosen,
            n_cells=int(n_cells or 1),
            perturbation_type=(ptype or "").strip() or None,
            layer=session.layer,
            evidence=session.evidence,
            gene_table=session.gene_table,
        )

    def predict(self, targets, context, ptype, n_cells, session, roles, request: gr.Request):
        if session is None or session.adata is None or roles is None:
            return _warn("load data first: predictions start from the data's control cells.", 5)
        try:
            result = self._predict_result(targets, context, ptype, n_cells, session, roles)
        except (ValueError, KeyError) as err:
            return _warn(_message(err), 5)
        session.last_prediction = result.prediction
        session.last_result = result.prediction.adata
        summary = prediction_summary(result)
        if result.invalid:
            return None, None, None, summary, session
        path = self._offer_download(result.prediction, request)
        return response_figure(result), genes_table(result), str(path), summary, session
