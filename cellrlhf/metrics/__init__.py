"""Statistics shared by every stage (intervals over perturbations today).

Stage packages (data, reward, evaluation, pipeline) import from here, never from each other, for
statistics: one definition of an interval, whichever stage reports it.
"""

__all__: list[str] = []
