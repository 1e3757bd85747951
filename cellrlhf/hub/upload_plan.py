"""The exact files a push commits to the Hub, as :class:`huggingface_hub.CommitOperationAdd`.

:func:`plan_model_upload` and :func:`plan_dataset_upload` return the operations that
:func:`cellrlhf.hub.push.push_model` / ``push_dataset`` hand to ``HfApi.create_commit``; nothing
else is uploaded. ``cellrlhf push --dry-run`` prints the plan, and :meth:`UploadPlan.materialize`
writes it to a local folder: that folder is byte for byte what the repository will hold.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cellrlhf.sft.model_files import list_model_files

__all__ = ["UploadPlan", "plan_model_upload", "plan_dataset_upload", "DATASET_FILES"]

logger = logging.getLogger(__name__)

# top-level files of a dataset directory (written by `cellrlhf data build`)
DATASET_FILES = (
    "manifest.json",
    "gene_vocab.json",
    "expression_decoder.json",
    "splits.json",
    "evidence_index.json",
)
DATASET_SUBSETS = ("pretrain", "sft", "rl")


@dataclass
class UploadPlan:
    """Operations of one commit, plus the card and a staging folder it may own.

    Use as a context manager when it stages generated files (dataset Parquet shards): the
    staging folder is removed on exit.
    """

    repo_type: str
    operations: list = field(default_factory=list)
    card_text: str = ""
    _staging: Path | None = None

    @property
    def paths(self) -> list[str]:
        """``path_in_repo`` of every operation, in commit order."""
        return [op.path_in_repo for op in self.operations]

    def sizes(self) -> dict[str, int]:
        """Bytes of each file to upload."""
        out = {}
        for op in self.operations:
            src = op.path_or_fileobj
            out[op.path_in_repo] = len(src) if isinstance(src, bytes) else Path(src).stat().st_size
        return out

    def summary(self) -> str:
        """One line per file with its size, for ``--dry-run`` and logs."""
        sizes = self.sizes()
        width = max((len(p) for p in sizes), default=0)
        lines = [f"  {p.ljust(width)}  {_human(n)}" for p, n in sizes.items()]
        return f"{len(sizes)} files, {_human(sum(sizes.values()))}:\n" + "\n".join(lines)

    def materialize(self, directory: str | Path) -> Path:
        """Write every planned file under ``directory`` (what the repository will hold)."""
        directory = Path(directory)
        for op in self.operations:
            target = directory / op.path_in_repo
            target.parent.mkdir(parents=True, exist_ok=True)
            src = op.path_or_fileobj
            if isinstance(src, bytes):
                target.write_bytes(src)
            else:
                shutil.copyfile(src, target)
        return directory

    def cleanup(self) -> None:
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None

    def __enter__(self) -> UploadPlan:
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def plan_model_upload(
    model_dir: str | Path,
    *,
    repo_id: str | None = None,
    eval_results=(),
    license: str | None = None,
    card: bool = True,
) -> UploadPlan:
    """The commit that shares ``model_dir``: its model files plus a generated ``README.md``.

    Parameters
    ----------
    model_dir
        A saved model directory. Only safetensors weights are uploaded; a directory with pickle
        weights only raises :class:`~cellrlhf.sft.model_files.UnsafeModelError`.
    repo_id
        Target repository, used in the card's usage examples.
    eval_results
        Extra evaluation JSON files or directories; ``eval_results.json`` in the directory is
        always read. The latest evaluation is uploaded as ``eval_results.json`` and summarized
        in the card.
    license
        SPDX license id for the card metadata.
    card
        Generate ``README.md``. ``False`` uploads the directory's own ``README.md`` if any.
    """
    from huggingface_hub import CommitOperationAdd

    from cellrlhf.hub.evaluation_summary import read_evaluation_dirs
    from cellrlhf.sft.eval_results import find_eval_files, latest_eval
    from cellrlhf.sft.model_card import build_model_card

    model_dir = Path(model_dir)
    files = [p for p in list_model_files(model_dir) if not (card and p.name == "README.md")]
    ops = [CommitOperationAdd(path_in_repo=p.name, path_or_fileobj=str(p)) for p in files]
    eval_results = read_evaluation_dirs(eval_results, model_dir)
    latest = latest_eval(find_eval_files(model_dir, eval_results))
    if latest is not None and latest.source.parent.resolve() != model_dir.resolve():
        ops = [op for op in ops if op.path_in_repo != "eval_results.json"]
        ops.append(
            CommitOperationAdd(path_in_repo="eval_results.json", path_or_fileobj=str(latest.source))
        )
    plan = UploadPlan(repo_type="model", operations=ops)
    if card:
        names = sorted([op.path_in_repo for op in ops] + ["README.md"])
        model_card = build_model_card(
            model_dir, repo_id=repo_id, eval_results=eval_results, license=license, files=names
        )
        plan.card_text = str(model_card)
        plan.operations.append(
            CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=plan.card_text.encode())
        )
    plan.operations.sort(key=lambda op: op.path_in_repo)
    return plan


def plan_dataset_upload(
    dataset_dir: str | Path,
    *,
    repo_id: str | None = None,
    license: str | None = None,
    max_shard_size: int = 500 * 2**20,
) -> UploadPlan:
    """The commit that shares a dataset directory built by ``cellrlhf data build``.

    Each saved subset (``pretrain``, ``sft``, ``rl``) becomes a Hub *config* stored as Parquet
    shards ``data/<subset>/<split>-0000i-of-0000n.parquet`` (what the Hub viewer and
    ``datasets.load_dataset(repo_id, "<subset>")`` read); the manifest, vocabulary, decoder and
    split files are uploaded as they are, with a generated dataset card. The plan owns a
    staging folder with the shards: use it as a context manager.
    """
    from huggingface_hub import CommitOperationAdd

    from cellrlhf.data.layout import open_dataset_dir
    from cellrlhf.hub.dataset_card import build_dataset_card

    dataset = open_dataset_dir(dataset_dir)
    dataset_dir = dataset.path
    staging = Path(tempfile.mkdtemp(prefix="cellrlhf-push-"))
    plan = UploadPlan(repo_type="dataset", _staging=staging)
    try:
        ops = [
            CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(dataset_dir / name))
            for name in DATASET_FILES
            if (dataset_dir / name).is_file()
        ]
        configs: dict[str, dict[str, list[str]]] = {}
        for subset in DATASET_SUBSETS:
            if (loaded := getattr(dataset, subset)) is not None:
                shards = _stage_subset(loaded, staging / "data" / subset, max_shard_size)
                configs[subset] = {}
                for split, paths in shards.items():
                    configs[subset][split] = [f"data/{subset}/{p.name}" for p in paths]
                    ops += [
                        CommitOperationAdd(
                            path_in_repo=f"data/{subset}/{p.name}", path_or_fileobj=str(p)
                        )
                        for p in paths
                    ]
        if not configs:
            raise FileNotFoundError(
                f"{dataset_dir} holds none of the saved subsets {DATASET_SUBSETS}; nothing to push."
            )
        plan.card_text = str(
            build_dataset_card(dataset_dir, configs=configs, repo_id=repo_id, license=license)
        )
        ops.append(
            CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=plan.card_text.encode())
        )
        plan.operations = sorted(ops, key=lambda op: op.path_in_repo)
    except BaseException:
        plan.cleanup()
        raise
    return plan


def _stage_subset(loaded, out: Path, max_shard_size: int) -> dict[str, list[Path]]:
    """Write a dataset part (``Dataset`` or ``DatasetDict``) as Parquet shards per split."""
    import datasets

    splits = loaded if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, list[Path]] = {}
    for split, ds in splits.items():
        n_shards = max(1, -(-int(ds.data.nbytes) // max_shard_size))
        paths = []
        for i in range(n_shards):
            path = out / f"{split}-{i:05d}-of-{n_shards:05d}.parquet"
            ds.shard(num_shards=n_shards, index=i, contiguous=True).to_parquet(str(path))
            paths.append(path)
        result[split] = paths
        logger.info("staged %s/%s: %d rows in %d shard(s)", out.name, split, len(ds), n_shards)
    return result
