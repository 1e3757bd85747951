"""Talk to a cell language model: the Python API (:class:`CellLM`), ``cellrlhf chat`` (terminal)
and ``cellrlhf serve`` (gradio web app)."""

from cellrlhf.chat.cell_input import EncodedCells, UnknownGenesError
from cellrlhf.chat.cell_lm import CellLM
from cellrlhf.chat.results import PerturbationPrediction

__all__ = ["CellLM", "EncodedCells", "PerturbationPrediction", "UnknownGenesError"]
