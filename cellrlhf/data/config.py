"""The data-build configuration: one YAML per data set / task mix in ``configs/data/``.

Every key is checked: an unknown key or a bad value raises :class:`ConfigError` naming the
section and the known keys. Overrides use dotted paths (``split.kind=unseen_combo``) and YAML
values, so the CLI and the Python API accept the same settings.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cellrlhf.config_types import check_types
from cellrlhf.data.balance import BalanceConfig
from cellrlhf.data.evidence_config import EvidenceConfig
from cellrlhf.data.schema import SchemaMapping
from cellrlhf.data.splits import SplitConfig
from cellrlhf.data.task_templates import TASKS
from cellrlhf.metrics.de import DE_METHODS

__all__ = [
    "ConfigError",
    "SourceConfig",
    "ExpressionConfig",
    "SentenceConfig",
    "PretrainConfig",
    "TaskConfig",
    "SFTConfig",
    "RLConfig",
    "DEConfig",
    "DecoderConfig",
    "OutputConfig",
    "DataBuildConfig",
    "load_config",
    "apply_overrides",
    "TRANSFORMS",
    "CONTEXT_MODES",
]

TRANSFORMS = ("none", "log1p_cp10k")
CONTEXT_MODES = ("control_cell", "pseudobulk", "mixed", "none")


class ConfigError(ValueError):
    """A data-build config is invalid."""


def _check_keys(spec: Mapping, cls, section: str) -> None:
    if not isinstance(spec, Mapping):
        raise ConfigError(f"section {section!r} must be a mapping, got {type(spec).__name__}.")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(spec) - known
    if unknown:
        raise ConfigError(
            f"unknown key(s) {sorted(unknown)} in {section!r}; known: {sorted(known)}."
        )


def _simple(cls, spec: Mapping | None, section: str):
    spec = dict(spec or {})
    _check_keys(spec, cls, section)
    try:
        return cls(**spec)
    except TypeError as err:
        raise ConfigError(f"section {section!r}: {err}") from err


@dataclass(frozen=True)
class SourceConfig:
    """Where the cells come from: exactly one of ``dataset``, ``path`` or ``simulate``.

    Attributes
    ----------
    dataset
        Registry name (``perturbench_devel``, ``pbmc68k_reduced``); looked up in the data dir.
    path
        A local ``.h5ad`` (relative paths are relative to the working directory).
    simulate
        Keyword arguments of :func:`~cellrlhf.data.simulate.simulate_perturbation_data`.
    use_raw
        Use ``adata.raw`` (genes and values) instead of ``X`` (loads the data in memory).
    obs_query
        ``pandas.DataFrame.query`` on the source ``obs`` selecting the cells to use.
    backed
        Stream a file from disk (``backed="r"``) instead of loading it.
    """

    dataset: str | None = None
    path: str | None = None
    simulate: Mapping[str, Any] | None = None
    use_raw: bool = False
    obs_query: str | None = None
    backed: bool = True

    def __post_init__(self) -> None:
        given = [k for k in ("dataset", "path", "simulate") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ConfigError(
                "source needs exactly one of 'dataset' (registry name), 'path' (.h5ad) or "
                f"'simulate' (simulator settings); got {given or 'none'}."
            )


@dataclass(frozen=True)
class ExpressionConfig:
    """Which expression values are ranked, tested and averaged.

    Attributes
    ----------
    layer
        ``adata.layers`` key (default ``X``).
    transform
        ``"none"`` or ``"log1p_cp10k"`` (``log1p(x / total * 1e4)`` per cell, for raw counts).
        Ranks are unchanged by it; references, DE and the decoder use the transformed values.
    gene_symbols
        ``var`` column with gene symbols when ``var_names`` are IDs.
    duplicates
        Repeated symbols: ``"error"``, ``"sum"`` or ``"first"``.
    chunk_size
        Cells read at a time when streaming.
    """

    layer: str | None = None
    transform: str = "none"
    gene_symbols: str | None = None
    duplicates: str = "error"
    chunk_size: int = 4096

    def __post_init__(self) -> None:
        if self.transform not in TRANSFORMS:
            raise ConfigError(
                f"expression.transform={self.transform!r}; choose one of {TRANSFORMS}."
            )
        if self.chunk_size < 1:
            raise ConfigError("expression.chunk_size must be >= 1.")


@dataclass(frozen=True)
class SentenceConfig:
    """Cell sentences: ``top_k`` genes (None = every expressed gene), tie-breaking ``seed``.

    ``pseudobulk_top_k`` is the length of pseudo-bulk control sentences (None = the median
    number of genes of that context's control cells, so they read like one cell).
    """

    top_k: int | None = None
    seed: int = 0
    pseudobulk_top_k: int | None = None

    def __post_init__(self) -> None:
        for name in ("top_k", "pseudobulk_top_k"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"sentences.{name} must be >= 1 or null.")


@dataclass(frozen=True)
class PretrainConfig:
    """The pretraining corpus (training cells only).

    Attributes
    ----------
    enabled
        Build ``pretrain/``.
    metadata_prefix
        Standard columns written before the sentence (``cell_context: K562; ...``).
    wrap_cell
        Write the sentence as ``<cell> ... </cell>`` (the form used in every chat task).
    max_cells
        Cap on the number of cells (seeded sample).
    balance
        Balanced sampling of the cells (:class:`~cellrlhf.data.balance.BalanceConfig`).
    """

    enabled: bool = True
    metadata_prefix: tuple[str, ...] = ()
    wrap_cell: bool = True
    max_cells: int | None = None
    balance: BalanceConfig = field(default_factory=BalanceConfig)


@dataclass(frozen=True)
class TaskConfig:
    """One instruction task.

    Attributes
    ----------
    enabled
        Build this task.
    max_examples
        Cap on training examples (seeded sample; None = all).
    max_eval_examples
        Cap on validation and test examples each.
    per_group
        Cap on examples per (perturbation, cell context) group, or per context for cell tasks.
    context
        ``perturbation_response`` only: what the prompt shows as the starting point,
        ``"control_cell"`` (a random control cell of the context), ``"pseudobulk"`` (the
        control pseudo-bulk sentence), ``"mixed"`` (half each) or ``"none"``.
    control_fraction
        ``perturbation_identification`` and ``perturbation_response``: control cells added, as a
        share of the perturbed examples. In ``perturbation_response`` they teach the answer to
        the control prompt (``<pert> <control> </pert>``), the model's own reference that
        evaluation subtracts (``reference: model``), so that the model's biases (cell length,
        rank calibration) cancel in its predicted change.
    balance
        Balanced sampling of the training cells used (validation and test sets keep their
        natural composition).
    """

    enabled: bool = True
    max_examples: int | None = 2000
    max_eval_examples: int | None = 500
    per_group: int | None = None
    context: str = "control_cell"
    control_fraction: float = 0.1
    balance: BalanceConfig = field(default_factory=BalanceConfig)

    def __post_init__(self) -> None:
        if self.context not in CONTEXT_MODES:
            raise ConfigError(f"task context={self.context!r}; choose one of {CONTEXT_MODES}.")
        if not 0.0 <= self.control_fraction < 1.0:
            raise ConfigError("control_fraction must be in [0, 1).")


@dataclass(frozen=True)
class SFTConfig:
    """The instruction tasks and their templates.

    ``context_noun`` is ``"cell_type"`` or ``"cell_line"`` (how prompts name a context);
    ``templates_dir`` replaces the packaged templates with JSON files of the same format.
    """

    enabled: bool = True
    tasks: Mapping[str, TaskConfig] = field(default_factory=dict)
    context_noun: str = "cell_type"
    templates_dir: str | None = None


@dataclass(frozen=True)
class RLConfig:
    """RL prompt sets (unseen-perturbation prediction).

    Attributes
    ----------
    enabled
        Build ``rl/``.
    context
        Prompt starting point, as for ``perturbation_response`` (default the pseudo-bulk).
    prompts_per_group
        Prompts per (perturbation, cell context) (different paraphrases / control cells).
    n_reference_sentences
        Real perturbed cells' sentences kept per prompt (distributional reward terms).
    min_cells
        Groups with fewer perturbed cells in a split get no prompt (logged).
    max_control_cells
        Control cells encoded and decoded for ``decoded_control``.
    answer_budget
        The RL answer budget you plan (``max_completion_length``); the build warns when it
        cuts more than 1 % of the training cells (gene-token estimate) and says what fits.
    """

    enabled: bool = True
    context: str = "pseudobulk"
    prompts_per_group: int = 1
    n_reference_sentences: int = 64
    min_cells: int = 20
    max_control_cells: int = 2048
    answer_budget: int | None = None

    def __post_init__(self) -> None:
        if self.context not in CONTEXT_MODES:
            raise ConfigError(f"rl.context={self.context!r}; choose one of {CONTEXT_MODES}.")
        if self.prompts_per_group < 1 or self.min_cells < 1 or self.n_reference_sentences < 0:
            raise ConfigError("rl.prompts_per_group and rl.min_cells must be >= 1.")


@dataclass(frozen=True)
class DEConfig:
    """Differential expression (``perturbation_effect`` answers, RL ``de_genes_*``)."""

    method: str = "welch"
    alpha: float = 0.05
    n_top: int = 20
    min_abs_effect: float = 0.0
    max_cells_per_group: int = 1000

    def __post_init__(self) -> None:
        if self.method not in DE_METHODS:
            raise ConfigError(f"de.method={self.method!r}; choose one of {DE_METHODS}.")
        if not 0.0 < self.alpha < 1.0:
            raise ConfigError("de.alpha must be in (0, 1).")


@dataclass(frozen=True)
class DecoderConfig:
    """The expression decoder, fitted on training cells only (``method``: ``global``,
    ``per_gene`` or ``neighbours``; ``n_neighbors`` and ``reference_cells`` for the last)."""

    method: str = "global"
    max_cells: int | None = 20000
    shrinkage: float = 10.0
    n_neighbors: int = 20
    reference_cells: int | None = 5000

    def __post_init__(self) -> None:
        from cellrlhf.cell2text.decoder_fit import DECODER_METHODS

        if self.method not in DECODER_METHODS:
            raise ConfigError(f"decoder.method={self.method!r}; choose one of {DECODER_METHODS}.")
        if self.n_neighbors < 1 or (self.reference_cells is not None and self.reference_cells < 1):
            raise ConfigError(
                "decoder.n_neighbors and decoder.reference_cells must be >= 1 "
                "(reference_cells: null keeps every fitted cell)."
            )


@dataclass(frozen=True)
class OutputConfig:
    """Where and how outputs are written."""

    dir: str = "outputs/data/dataset"
    parquet: bool = False
    overwrite: bool = True
    max_shard_size: str = "500MB"


@dataclass(frozen=True)
class DataBuildConfig:
    """A complete data-build config (see ``configs/data/*.yaml``)."""

    name: str
    source: SourceConfig
    schema: SchemaMapping
    expression: ExpressionConfig = field(default_factory=ExpressionConfig)
    sentences: SentenceConfig = field(default_factory=SentenceConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    de: DEConfig = field(default_factory=DEConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    evidence: EvidenceConfig = field(default_factory=EvidenceConfig)
    seed: int = 0
    progress: bool = True

    # ------------------------------------------------------------------ parsing
    @classmethod
    def from_dict(cls, spec: Mapping) -> DataBuildConfig:
        """Parse a config mapping (as read from YAML)."""
        spec = dict(spec)
        _check_keys(spec, cls, "<top level>")
        for required in ("name", "source", "schema"):
            if required not in spec:
                raise ConfigError(f"the data config needs a {required!r} section.")
        for section, section_cls in _typed_sections().items():
            check_types(section_cls, spec.get(section), section, ConfigError)
        pretrain = dict(spec.get("pretrain") or {})
        _check_keys(pretrain, PretrainConfig, "pretrain")
        pretrain["balance"] = BalanceConfig.from_dict(pretrain.get("balance"))
        prefix = pretrain.get("metadata_prefix", ())
        pretrain["metadata_prefix"] = (prefix,) if isinstance(prefix, str) else tuple(prefix or ())
        sft = dict(spec.get("sft") or {})
        _check_keys(sft, SFTConfig, "sft")
        tasks = {}
        for task, task_spec in (sft.get("tasks") or {}).items():
            if task not in TASKS:
                raise ConfigError(f"unknown task {task!r} in sft.tasks; tasks: {list(TASKS)}.")
            task_spec = dict(task_spec or {})
            _check_keys(task_spec, TaskConfig, f"sft.tasks.{task}")
            task_spec["balance"] = BalanceConfig.from_dict(task_spec.get("balance"))
            tasks[task] = TaskConfig(**task_spec)
        sft["tasks"] = tasks
        if sft.get("context_noun", "cell_type") not in ("cell_type", "cell_line"):
            raise ConfigError("sft.context_noun must be 'cell_type' or 'cell_line'.")
        try:
            return cls(
                name=str(spec["name"]),
                source=_simple(SourceConfig, spec["source"], "source"),
                schema=SchemaMapping.from_dict(spec["schema"] or {}),
                expression=_simple(ExpressionConfig, spec.get("expression"), "expression"),
                sentences=_simple(SentenceConfig, spec.get("sentences"), "sentences"),
                split=SplitConfig.from_dict(spec.get("split")),
                pretrain=PretrainConfig(**pretrain),
                sft=SFTConfig(**sft),
                rl=_simple(RLConfig, spec.get("rl"), "rl"),
                de=_simple(DEConfig, spec.get("de"), "de"),
                decoder=_simple(DecoderConfig, spec.get("decoder"), "decoder"),
                output=_simple(OutputConfig, spec.get("output"), "output"),
                evidence=EvidenceConfig.from_dict(spec.get("evidence")),
                seed=int(spec.get("seed", 0)),
                progress=bool(spec.get("progress", True)),
            )
        except ValueError as err:
            if isinstance(err, ConfigError):
                raise
            raise ConfigError(str(err)) from err

    def to_dict(self) -> dict:
        """Plain-data form with every default filled in (stored in the manifest); without
        ``evidence`` while it is off, so fingerprints of builds without evidence are unchanged."""

        def plain(value):
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                if isinstance(value, SchemaMapping):
                    return value.to_dict()
                return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
            if isinstance(value, Mapping):
                return {str(k): plain(v) for k, v in value.items()}
            if isinstance(value, (tuple, list)):
                return [plain(v) for v in value]
            return value

        out = plain(self)
        if self.decoder.method != "neighbours":  # fingerprints as before the neighbour options
            out["decoder"].pop("n_neighbors")
            out["decoder"].pop("reference_cells")
        if not self.evidence.enabled:
            out.pop("evidence")
        else:  # options at their defaults are left out: fingerprints as before the options
            if self.evidence.write == "profile":
                for key in ("write", "change_tiers", "change_genes"):
                    out["evidence"].pop(key)
            if not self.evidence.components_of_singles:
                out["evidence"].pop("components_of_singles")
            if not self.evidence.synthetic_combinations:
                out["evidence"].pop("synthetic_combinations")
            if not self.evidence.synthetic_transfers:
                out["evidence"].pop("synthetic_transfers")
            if not self.evidence.pool_other_contexts:
                out["evidence"].pop("pool_other_contexts")
            if not (self.evidence.synthetic_combinations or self.evidence.synthetic_transfers):
                out["evidence"].pop("synthetic_min_change")
            if self.evidence.synthetic_apply == "shift":
                out["evidence"].pop("synthetic_apply")
        return out

    def with_overrides(self, overrides: Sequence[str]) -> DataBuildConfig:
        """A new config with ``key.sub=value`` overrides applied."""
        return DataBuildConfig.from_dict(apply_overrides(self.to_dict(), overrides))


def _typed_sections() -> dict:
    """Sections whose values are checked against their dataclass's field types."""
    return {
        "source": SourceConfig,
        "expression": ExpressionConfig,
        "sentences": SentenceConfig,
        "split": SplitConfig,
        "pretrain": PretrainConfig,
        "rl": RLConfig,
        "de": DEConfig,
        "decoder": DecoderConfig,
        "output": OutputConfig,
    }


def apply_overrides(spec: Mapping, overrides: Sequence[str]) -> dict:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a config mapping."""
    out = copy.deepcopy(dict(spec))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value.")
        key, raw = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"override {item!r} has an empty key.")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({err}).") from err
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section.")
            node = child
        node[parts[-1]] = value
    return out


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> DataBuildConfig:
    """Read a data-build YAML and apply overrides."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data config {path} does not exist (see configs/data/).")
    with path.open() as handle:  # the file's name appears in YAML errors
        spec = yaml.safe_load(handle) or {}
    if not isinstance(spec, dict):
        raise ConfigError(f"{path} must contain a YAML mapping.")
    return DataBuildConfig.from_dict(apply_overrides(spec, overrides))
