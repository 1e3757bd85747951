"""Fixtures of the reward-stage tests (built in :mod:`tests.fixtures.perturbation_cells`)."""

from tests.fixtures.perturbation_cells import line_decoder, perturbation_adata

__all__ = ["line_decoder", "perturbation_adata"]
