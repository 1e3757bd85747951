"""Figures for PNG reports without pyplot, so a user's matplotlib backend is never switched.

Library code draws on :class:`matplotlib.figure.Figure` objects (the object-oriented API):
``fig.savefig`` renders them with Agg whatever backend a notebook or GUI has selected, and no
global pyplot state is created or needs closing.
"""

from __future__ import annotations

__all__ = ["subplots"]


def subplots(nrows: int = 1, ncols: int = 1, *, figsize=None, squeeze: bool = True, **kwargs):
    """``(figure, axes)`` like :func:`matplotlib.pyplot.subplots`, without pyplot.

    ``figsize`` (and ``dpi``, ``layout``...) go to the figure, the rest to
    :meth:`matplotlib.figure.Figure.subplots`.
    """
    from matplotlib.figure import Figure

    fig_kwargs = {k: kwargs.pop(k) for k in ("dpi", "layout", "constrained_layout") if k in kwargs}
    fig = Figure(figsize=figsize, **fig_kwargs)
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze, **kwargs)
