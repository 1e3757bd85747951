"""The options that load a :class:`~cellrlhf.chat.cell_lm.CellLM`, shared by ``cellrlhf chat``
and ``cellrlhf serve`` (their options dataclasses extend :class:`ModelOptions`)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ModelOptions"]


@dataclass
class ModelOptions:
    """Which model to load, and how (flags, or keys of a ``--config`` YAML).

    ``--constrain-cells`` and ``--trust-remote-code`` are switches (``--constrain-cells false``
    or a YAML ``false`` turns one off again).
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

    def load_model(self):
        """The :class:`~cellrlhf.chat.cell_lm.CellLM` these options name."""
        from cellrlhf.chat.cell_lm import CellLM

        return CellLM.from_pretrained(
            self.model,
            revision=self.revision,
            device_map=self.device_map,
            dtype=self.dtype,
            trust_remote_code=self.trust_remote_code,
            constrain_cells=self.constrain_cells,
        )
