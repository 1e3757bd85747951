"""cellrlhf: RLHF and instruction tuning for cell language models.

The package is organised as the stages of the pipeline, each a subpackage:
``cell2text`` -> ``data`` -> ``sft`` -> ``reward`` -> ``ppo``, then ``chat`` and ``hub``.
A stage reads the previous stage's saved outputs, never its internals.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
