"""Share a saved model or a built dataset on the Hugging Face Hub (``cellrlhf push``).

The upload is one ``HfApi.create_commit`` of the operations planned by
:mod:`cellrlhf.hub.upload_plan`; huggingface_hub uploads large files itself (Xet / LFS, in
parallel, resumable). The token comes from ``HF_TOKEN`` or ``hf auth login`` and is never
printed or logged.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cellrlhf.cli_help import RepeatableOption
from cellrlhf.sft.model_files import looks_like_hub_id

__all__ = [
    "PushOptions",
    "cli",
    "is_network_error",
    "make_parser",
    "push_dataset",
    "push_model",
    "push_space",
]

logger = logging.getLogger(__name__)


NOT_LOGGED_IN = (
    "not logged in to the Hugging Face Hub: run `huggingface-cli login` (or `hf auth login`) "
    "or set HF_TOKEN to a token with write access."
)
_NETWORK_ERRORS = {"TransportError", "ConnectionError", "Timeout", "TimeoutException"}


def _token() -> str | None:
    from huggingface_hub import get_token

    return get_token()


def is_network_error(err: BaseException) -> bool:
    """Whether ``err`` says the Hub could not be reached (connection, timeout, offline mode)."""
    if isinstance(err, (ConnectionError, TimeoutError)):
        return True
    names = {cls.__name__ for cls in type(err).__mro__}
    return bool(names & (_NETWORK_ERRORS | {"OfflineModeIsEnabled"}))


def _scrub(text: str) -> str:
    """``text`` without the token, whatever printed it."""
    token = _token()
    return text.replace(token, "hf_***") if token else text


def _network_message(err: BaseException) -> str:
    from huggingface_hub import constants

    reason = " ".join(str(err).split())[:200] or type(err).__name__
    return _scrub(
        f"cannot reach the Hugging Face Hub ({constants.ENDPOINT}: {type(err).__name__}: "
        f"{reason}). Check the network connection, HF_ENDPOINT and HF_HUB_OFFLINE, then try "
        "again; nothing was uploaded."
    )


def _http_message(err) -> str:
    status = err.response.status_code if err.response is not None else "?"
    if status == 401:
        return (
            "the Hub refused the token (HTTP 401): it is invalid or expired. Run "
            "`huggingface-cli login` (or `hf auth login`) or set HF_TOKEN to a valid token."
        )
    hint = " Check that your token has write access to that namespace." if status == 403 else ""
    return f"the Hub refused the upload (HTTP {status}).{hint}"


def _check_repo_id(repo_id: str) -> None:
    if not looks_like_hub_id(repo_id):
        raise ValueError(
            f"repo id {repo_id!r} is not of the form 'ORG_OR_USER/NAME' (letters, digits, '-', "
            "'_', '.')."
        )


def _commit(plan, repo_id: str, *, private: bool, token, revision, commit_message, create_pr):
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    space_sdk = "gradio" if plan.repo_type == "space" else None
    url = api.create_repo(
        repo_id, repo_type=plan.repo_type, private=private, exist_ok=True, space_sdk=space_sdk
    )
    logger.info("uploading to %s\n%s", url, plan.summary())
    info = api.create_commit(
        repo_id,
        operations=plan.operations,
        commit_message=commit_message,
        repo_type=plan.repo_type,
        revision=revision,
        create_pr=create_pr,
    )
    logger.info("pushed: %s", info.commit_url)
    return info


def push_model(
    model_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str = "Upload cellrlhf model",
    create_pr: bool = False,
    eval_results=(),
    license: str | None = None,
):
    """Upload a saved model directory to ``repo_id`` (created if needed).

    Uploads the safetensors weights, tokenizer and chat template, cell2text files
    (``gene_vocab.json``, ``expression_decoder.json``), ``cellrlhf.json``, the training config,
    the data manifest, the latest evaluation and a generated model card. Returns the
    :class:`huggingface_hub.CommitInfo`.
    """
    from cellrlhf.hub.upload_plan import plan_model_upload

    _check_repo_id(repo_id)
    plan = plan_model_upload(model_dir, repo_id=repo_id, eval_results=eval_results, license=license)
    return _commit(
        plan,
        repo_id,
        private=private,
        token=token,
        revision=revision,
        commit_message=commit_message,
        create_pr=create_pr,
    )


def push_dataset(
    dataset_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str = "Upload cellrlhf dataset",
    create_pr: bool = False,
    license: str | None = None,
):
    """Upload a dataset directory built by ``cellrlhf data build`` as a Hub dataset repository
    (Parquet configs ``pretrain`` / ``sft`` / ``rl`` plus the manifest, vocabulary and decoder)."""
    from cellrlhf.hub.upload_plan import plan_dataset_upload

    _check_repo_id(repo_id)
    with plan_dataset_upload(dataset_dir, repo_id=repo_id, license=license) as plan:
        return _commit(
            plan,
            repo_id,
            private=private,
            token=token,
            revision=revision,
            commit_message=commit_message,
            create_pr=create_pr,
        )


def push_space(
    model_id: str,
    space_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    title: str | None = None,
    requirement: str | None = None,
    commit_message: str = "Chat app for a cellrlhf model",
):
    """Create (or update) a gradio Space at ``space_id`` that serves Hub model ``model_id``."""
    from cellrlhf.hub.space import DEFAULT_REQUIREMENT, plan_space_upload

    _check_repo_id(space_id)
    plan = plan_space_upload(model_id, title=title, requirement=requirement or DEFAULT_REQUIREMENT)
    return _commit(
        plan,
        space_id,
        private=private,
        token=token,
        revision=None,
        commit_message=commit_message,
        create_pr=False,
    )


@dataclass
class PushOptions:
    """Options of ``cellrlhf push`` (flags, or keys of a ``--config`` YAML)."""

    repo_id: str = field(metadata={"help": "target repository, ORG_OR_USER/NAME"})
    model: str | None = field(
        default=None, metadata={"help": "saved model directory (sft / reward / ppo output)"}
    )
    dataset: str | None = field(
        default=None, metadata={"help": "dataset directory written by `cellrlhf data build`"}
    )
    space_for: str | None = field(
        default=None,
        metadata={
            "metavar": "MODEL_ID",
            "help": "create a gradio Space (at --repo-id) serving this Hub model's chat app",
        },
    )
    requirement: str | None = field(
        default=None,
        metadata={
            "help": "with --space-for: how the Space installs cellrlhf (default "
            "cellrlhf[chat,scanpy])"
        },
    )
    private: bool = field(default=False, metadata={"help": "create the repository as private"})
    revision: str | None = field(
        default=None, metadata={"help": "branch to commit to (default: main)"}
    )
    create_pr: bool = field(default=False, metadata={"help": "open a pull request instead"})
    commit_message: str | None = field(default=None, metadata={"help": "commit message"})
    license: str | None = field(
        default=None, metadata={"help": "SPDX license id for the card (apache-2.0, ...)"}
    )
    eval_results: list[str] = field(
        default_factory=list,
        metadata={
            "action": RepeatableOption,
            "metavar": "PATH",
            "help": "evaluation JSON file or directory to include (repeatable; the latest one "
            "is used)",
        },
    )
    dry_run: bool = field(
        default=False,
        metadata={
            "help": "print the files that would be committed (and the card with --show-card); "
            "no network"
        },
    )
    show_card: bool = field(default=False, metadata={"help": "with --dry-run: print the card"})

    def __post_init__(self) -> None:
        given = [n for n in ("model", "dataset", "space_for") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(
                "say what to push with exactly one of --model DIR, --dataset DIR or --space-for "
                f"MODEL_ID (got {', '.join('--' + n for n in given) or 'none'})."
            )


def make_parser(prog: str = "cellrlhf push"):
    """The :class:`~cellrlhf.cli_help.CellTrlParser` of :class:`PushOptions`."""
    from cellrlhf.cli_help import CellTrlParser

    return CellTrlParser(
        (PushOptions,),
        prog=prog,
        description="Share a saved model (or a dataset built by `cellrlhf data build`) on the "
        "Hugging Face Hub. Log in first with `hf auth login` or set HF_TOKEN.",
    )


def cli(argv: Sequence[str] | None = None) -> int:
    """``cellrlhf push``: returns the process exit status."""
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

    (args,) = make_parser().parse_args_and_config(argv)
    try:
        _check_repo_id(args.repo_id)
        if args.dry_run:
            return _dry_run(args)
        if _token() is None:
            print(f"cellrlhf push: {NOT_LOGGED_IN}", file=sys.stderr)
            return 2
        if not args.space_for:
            from cellrlhf.hub.license_prompt import resolve_license

            args.license = resolve_license(args.license, model=args.model, dataset=args.dataset)
        info = _push(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"cellrlhf push: {err}", file=sys.stderr)
        return 2
    except LocalTokenNotFoundError:
        print(f"cellrlhf push: {NOT_LOGGED_IN}", file=sys.stderr)
        return 2
    except HfHubHTTPError as err:
        print(f"cellrlhf push: {_http_message(err)}", file=sys.stderr)
        return 1
    except Exception as err:
        if not is_network_error(err):
            raise
        print(f"cellrlhf push: {_network_message(err)}", file=sys.stderr)
        return 1
    print(info.commit_url)
    return 0


def _dry_run(args: PushOptions) -> int:
    """Print the files ``args`` would commit (and the card with ``--show-card``); no network."""
    from cellrlhf.hub.upload_plan import plan_dataset_upload, plan_model_upload

    if args.model:
        plan = plan_model_upload(
            args.model, repo_id=args.repo_id, eval_results=args.eval_results, license=args.license
        )
    elif args.space_for:
        from cellrlhf.hub.space import DEFAULT_REQUIREMENT, plan_space_upload

        plan = plan_space_upload(
            args.space_for, requirement=args.requirement or DEFAULT_REQUIREMENT
        )
    else:
        plan = plan_dataset_upload(args.dataset, repo_id=args.repo_id, license=args.license)
    with plan:
        print(f"would commit to {plan.repo_type} repository {args.repo_id}: {plan.summary()}")
        if args.show_card:
            print(plan.card_text)
    return 0


def _push(args: PushOptions):
    """Commit what ``args`` names with :func:`push_model`, :func:`push_space` or
    :func:`push_dataset`; returns the :class:`huggingface_hub.CommitInfo`."""
    message = {"commit_message": args.commit_message} if args.commit_message else {}
    if args.space_for:
        return push_space(
            args.space_for,
            args.repo_id,
            private=args.private,
            requirement=args.requirement,
            **message,
        )
    options = dict(
        private=args.private,
        revision=args.revision,
        create_pr=args.create_pr,
        license=args.license,
        **message,
    )
    if args.model:
        return push_model(args.model, args.repo_id, eval_results=args.eval_results, **options)
    return push_dataset(args.dataset, args.repo_id, **options)
