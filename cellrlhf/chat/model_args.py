"""The options that load a :class:`~cellrlhf.chat.cell_lm.CellLM`, shared by ``cellrlhf chat``
and ``cellrlhf serve`` (their options dataclasses extend :class:`ModelOptions`)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ModelOptions"]


@dataclass
class ModelOptions:
    """Which model to load, and how (flags, or keys of a ``--config`` YAML).

    ``--evidence`` sets the measured evidence of every perturbation prompt the loaded model
    answers (chat and web app alike). ``--constrain-cells`` and ``--trust-remote-code`` are
    switches (``--constrain-cells false`` or a YAML ``false`` turns one off again).
    """

    model: str = field(metadata={"help": "model directory or Hugging Face Hub id"})
    revision: str | None = field(default=None, metadata={"help": "Hub revision of --model"})
    device_map: str | None = field(
        default=None, metadata={"help": "e.g. auto (GPUs via accelerate)"}
    )
    dtype: str | None = field(
        default=None, metadata={"help": "weight dtype, e.g. bfloat16 or auto"}
    )
    constrain_cells: bool = field(
        default=False,
        metadata={
            "help": "constrained decoding of generated cells: only the model's genes, each at "
            "most once per cell (needs gene tokens; off: the model's own answers)"
        },
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "run code shipped with the model (only for models you trust)"},
    )
    evidence: str | None = field(
        default=None,
        metadata={
            "help": "measured evidence in perturbation prompts: a dataset directory built with "
            "an `evidence:` section (e.g. your own measurements), a model directory or an "
            "evidence_index.json; 'none' for no block; default: the model's own "
            "(docs/evidence.md)"
        },
    )
    gene_table: str | None = field(
        default=None,
        metadata={"help": "gene-similarity table of `neighbours` evidence (default: recorded)"},
    )

    def load_model(self):
        """The :class:`~cellrlhf.chat.cell_lm.CellLM` these options name."""
        from cellrlhf.chat.cell_lm import CellLM

        lm = CellLM.from_pretrained(
            self.model,
            revision=self.revision,
            device_map=self.device_map,
            dtype=self.dtype,
            trust_remote_code=self.trust_remote_code,
            constrain_cells=self.constrain_cells,
        )
        evidence = self.evidence
        if evidence is not None and evidence.strip().lower() == "none":
            evidence = False
        lm.evidence.set_default(evidence, self.gene_table)  # a bad one fails here, at start
        return lm
