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

The options (:class:`ServeOptions`) are flags or keys of a ``--config`` YAML, flags overriding
it (``cellrlhf serve --config serve.yaml --port 8000``). The page's components are built in
:mod:`cellrlhf.chat.web_page`, its event handlers live in :mod:`cellrlhf.chat.web_handlers`.
"""

import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cellrlhf.chat.model_args import ModelOptions
from cellrlhf.chat.web_security import AUTH_ENV, is_loopback, parse_auth

__all__ = ["ServeOptions", "UploadRejected", "build_app", "cli", "launch_app", "make_parser"]

logger = logging.getLogger(__name__)


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

    The page's components come from :func:`cellrlhf.chat.web_page.build_page`, its events run
    :class:`cellrlhf.chat.web_handlers.AppHandlers`.

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

    from cellrlhf.chat.web_handlers import AppHandlers
    from cellrlhf.chat.web_page import build_page, connect_events
    from cellrlhf.chat.web_security import DownloadOwners

    if upload_dir is None:
        from gradio.utils import get_upload_folder

        upload_dir = get_upload_folder()
    name = title or (lm.path.name if lm.path else "cell language model")
    downloads = downloads if downloads is not None else DownloadOwners()
    handlers = AppHandlers(
        lm, upload_dir=upload_dir, downloads=downloads, max_new_tokens=max_new_tokens
    )
    with gr.Blocks(title=f"cellrlhf: {name}") as demo:
        connect_events(build_page(name, lm, example=example), handlers)
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


@dataclass
class ServeOptions(ModelOptions):
    """Options of ``cellrlhf serve`` (flags, or keys of a ``--config`` YAML)."""

    host: str = field(
        default="127.0.0.1",
        metadata={"help": "address to bind; the default serves this machine only"},
    )
    port: int = field(default=7860, metadata={"help": "port to serve on"})
    auth: str | None = field(
        default=None,
        metadata={
            "metavar": "USER:PASSWORD",
            "help": "ask for a login (several as u1:p1,u2:p2); better from the environment "
            f"variable {AUTH_ENV}, which other users cannot read in the process list. Advised "
            "with --host",
        },
    )
    max_upload_mb: float = field(default=500, metadata={"help": "largest accepted upload"})
    max_new_tokens: int = field(default=512, metadata={"help": "token budget of chat answers"})
    example: bool = field(
        default=True, metadata={"help": "offer the example cells (--no-example hides them)"}
    )

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port {self.port}: give a port number in 0..65535.")
        if self.max_upload_mb <= 0:
            raise ValueError(f"--max-upload-mb {self.max_upload_mb}: give a positive size.")
        if self.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens {self.max_new_tokens}: give at least 1.")


def make_parser(prog: str = "cellrlhf serve"):
    """The :class:`~cellrlhf.cli_help.CellTrlParser` of :class:`ServeOptions`."""
    from cellrlhf.cli_help import CellTrlParser

    return CellTrlParser(
        (ServeOptions,),
        prog=prog,
        description="Serve a web app to chat with a model about cells.",
    )


def cli(argv: Sequence[str] | None = None) -> int:
    """``cellrlhf serve``: returns the process exit status."""
    (options,) = make_parser().parse_args_and_config(argv)
    try:
        auth = parse_auth(options.auth, source="--auth") or parse_auth(
            os.environ.get(AUTH_ENV), source=AUTH_ENV
        )
    except ValueError as err:
        print(f"cellrlhf serve: {err}", file=sys.stderr)
        return 2
    warning = _host_warning(options.host, auth)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("cellrlhf serve needs gradio: pip install 'cellrlhf[chat]'", file=sys.stderr)
        return 2
    try:
        lm = options.load_model()
    except (FileNotFoundError, ValueError) as err:
        print(f"cellrlhf serve: {err}", file=sys.stderr)
        return 2
    demo = build_app(lm, example=options.example, max_new_tokens=options.max_new_tokens)
    launch_app(
        demo,
        host=options.host,
        port=options.port,
        max_upload_mb=options.max_upload_mb,
        auth=auth,
    )
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
