"""The ``pretrain`` and ``sft`` stages: train cell language models with TRL, accelerate, DeepSpeed.

Entry points (same code behind each)::

    accelerate launch pretrain.py --config configs/pretrain/cpu_demo.yaml
    accelerate launch sft.py --config configs/sft/cpu_demo.yaml
    cellrlhf pretrain ... / cellrlhf sft ...

Modules, one concern each (heavy libraries are imported only when a run starts):

- :mod:`~cellrlhf.sft.configs`: argument dataclasses (TRL ``ScriptArguments`` / ``ModelConfig`` /
  ``SFTConfig`` plus cell fields);
- :mod:`~cellrlhf.sft.pretrain`, :mod:`~cellrlhf.sft.sft`: ``main``, ``make_parser``, ``cli``;
- :mod:`~cellrlhf.sft.training_run`: the shared flow from arguments to a saved model;
- :mod:`~cellrlhf.sft.model_factory`, :mod:`~cellrlhf.sft.gene_embedding_init`: models and
  tokenizers (fresh, cellrlhf checkpoints, any causal LM with gene tokens added);
- :mod:`~cellrlhf.sft.perturbation_dropout`: ``<unk_pert>`` dropout of prompt targets;
- :mod:`~cellrlhf.sft.evaluation`: generation metrics on a held-out slice;
- :mod:`~cellrlhf.sft.trainer`: ``CellSFTTrainer`` (atomic checkpoints, perplexity, metrics);
- :mod:`~cellrlhf.sft.checkpoints`: atomic checkpoint writes and resume resolution;
- :mod:`~cellrlhf.sft.model_dir`: the saved model directory (save, ``load_cell_model``);
  :mod:`~cellrlhf.sft.model_files` (which files make it, safetensors only, Hub ids),
  :mod:`~cellrlhf.sft.model_card` and :mod:`~cellrlhf.sft.eval_results` (the ``README.md`` card
  every stage writes on save). ``hub`` publishes these directories; it sits above the stages.
"""

__all__ = [
    "checkpoints",
    "configs",
    "eval_results",
    "evaluation",
    "gene_embedding_init",
    "model_card",
    "model_dir",
    "model_factory",
    "model_files",
    "perturbation_dropout",
    "pretrain",
    "sft",
    "trainer",
    "training_run",
]
