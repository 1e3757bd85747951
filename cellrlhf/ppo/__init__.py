"""The RL stage: PPO, GRPO and RLOO (TRL) on perturbation fidelity, guarded by held-out checks.

Entry points: ``cellrlhf ppo`` (:mod:`cellrlhf.ppo.ppo`) and ``cellrlhf grpo``
(:mod:`cellrlhf.ppo.grpo`, ``--trainer grpo|rloo``), also ``ppo.py`` / ``grpo.py`` at the
repository root for ``accelerate launch``. Modules:

- :mod:`~cellrlhf.ppo.configs`: argument dataclasses (TRL's configs plus cell fields);
- :mod:`~cellrlhf.ppo.ppo_trainer`, :mod:`~cellrlhf.ppo.grpo_trainer`: TRL's trainers with
  per-phase timing, early stopping and monitor hooks;
- :mod:`~cellrlhf.ppo.heldout_monitor`: periodic held-out evaluation (true group fidelity,
  validity, diversity, distance to real cells, learned reward, KL), best-policy selection;
- :mod:`~cellrlhf.ppo.policy_output`: the stage's saved model directory.

TRL is imported only inside this package, and only when a stage runs.
"""

__all__: list[str] = []
