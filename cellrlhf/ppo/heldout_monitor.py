"""The guard against reward hacking and collapse: periodic evaluation on held-out perturbations.

Before training, every ``every_steps`` optimizer steps and at the end, the monitor samples
``num_samples`` answers (>= 64 for stable pseudo-bulks) for each held-out prompt from the
current policy and logs, through the trainer's ``log`` (so every ``report_to`` backend gets
them), under ``heldout/``:

- the true group fidelity (``pearson_delta``, all genes and top-DE genes),
- validity (decoded gene fraction, duplicates, unknown words, unfinished answers, length),
- diversity (distinct sentences, gene-token entropy) and the distance to real cells,
- the learned reward model's mean score on the same answers (when there is one),
- ``kl``: Monte-Carlo ``KL(policy || reference)`` per answer (and per token).

Each evaluation is judged by :class:`~cellrlhf.ppo.model_selection.BestPolicySelector`: the
best held-out fidelity among evaluations whose diversity held is saved to ``best_dir``
(through the trainer, so DeepSpeed gathers the weights), and training stops after
``patience`` evaluations without improvement. The history goes to ``heldout_eval_history.json``
and ``heldout_eval.png`` in the output directory after every evaluation.

Work is split evenly over processes (same number of forward calls on every rank, as ZeRO-3
needs) and gathered, so every rank reaches the same decision.

The trainer passed to :meth:`HeldoutMonitor.bind` provides ``monitor_policy()`` and
``monitor_reference(policy)`` (context managers yielding ready-to-use models),
``monitor_reward_model()``, ``accelerator``, ``save_model(dir)`` and ``log_heldout(dict)``; the
trainers of :mod:`cellrlhf.ppo.ppo_trainer` and :mod:`cellrlhf.ppo.grpo_trainer` do.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from transformers import TrainerCallback

from cellrlhf.ppo.heldout_evaluation import HeldoutPrompt, score_heldout_samples
from cellrlhf.ppo.heldout_generation import answer_logprobs, sample_answers
from cellrlhf.ppo.model_selection import FIDELITY_KEY, SPECIFIC_KEY, BestPolicySelector
from cellrlhf.ppo.reward_model_scoring import score_answer_ids

__all__ = [
    "HISTORY_FILENAME",
    "PLOT_FILENAME",
    "HeldoutSettings",
    "HeldoutMonitor",
    "plot_heldout_history",
]

logger = logging.getLogger(__name__)

HISTORY_FILENAME = "heldout_eval_history.json"
PLOT_FILENAME = "heldout_eval.png"


@dataclass(frozen=True)
class HeldoutSettings:
    """How the monitor samples and scores.

    Attributes
    ----------
    every_steps
        Evaluate every N optimizer steps (and before training and at the end).
    num_samples
        Answers per held-out prompt (the pseudo-bulk size).
    batch_size
        Sequences per generate / forward call.
    max_new_tokens, temperature
        Sampling as in training.
    seed
        Sampling seed, reused at every evaluation (common random numbers across steps).
    top_k_de, distance
        Top-DE gene count and distance to real cells (``"energy"`` / ``"mmd"``).
    split
        The ``rl/`` split the prompts come from (``validation`` or ``test``), for the record.
    """

    every_steps: int
    num_samples: int = 64
    batch_size: int = 64
    max_new_tokens: int = 64
    temperature: float = 1.0
    seed: int = 1234
    top_k_de: int = 20
    distance: str = "energy"
    split: str = "test"


class HeldoutMonitor(TrainerCallback):
    """Evaluate held-out fidelity during RL, keep the best policy, stop when it stops improving.

    Parameters
    ----------
    prompts
        Held-out prompts with their real reference data.
    tokenizer
        The policy's tokenizer (chat template, pad token).
    decoder
        The data set's :class:`~cellrlhf.cell2text.decoder.ExpressionDecoder`.
    settings
        :class:`HeldoutSettings`.
    selector
        Decides eligibility, the best policy and early stopping.
    stop_ids
        End-of-answer token ids.
    output_dir
        Where the history and its plot are written.
    best_dir
        Where the best policy is saved (``None``: not saved, only tracked).
    """

    def __init__(
        self,
        prompts: Sequence[HeldoutPrompt],
        tokenizer,
        decoder,
        *,
        settings: HeldoutSettings,
        selector: BestPolicySelector,
        stop_ids: Sequence[int],
        output_dir: str | Path,
        best_dir: str | Path | None = None,
    ) -> None:
        if not prompts:
            raise ValueError("the held-out monitor needs at least one prompt.")
        if settings.num_samples < 64:
            logger.warning(
                "held-out pseudo-bulks of %d cells are noisy; use >= 64 (heldout_num_samples) for "
                "figures you compare.",
                settings.num_samples,
            )
        self.prompts = list(prompts)
        self.tokenizer = tokenizer
        self.decoder = decoder
        self.settings = settings
        self.selector = selector
        self.stop_ids = [int(i) for i in stop_ids]
        self.output_dir = Path(output_dir)
        self.best_dir = Path(best_dir) if best_dir is not None else None
        self.prompt_ids = [_prompt_ids(tokenizer, p.prompt) for p in self.prompts]
        self.history: list[dict] = []
        self.trainer = None
        self._last_step: int | None = None

    # ------------------------------------------------------------------ wiring
    def bind(self, trainer) -> HeldoutMonitor:
        """Attach the trainer whose policy is evaluated (see the module docstring)."""
        for name in (
            "monitor_policy",
            "monitor_reference",
            "monitor_reward_model",
            "save_model",
            "log_heldout",
        ):
            if not hasattr(trainer, name):
                raise TypeError(
                    f"{type(trainer).__name__} lacks {name}(); use a cellrlhf RL trainer."
                )
        self.trainer = trainer
        return self

    @property
    def best_step(self) -> int | None:
        return self.selector.best_step

    # ------------------------------------------------------------------ callback events
    def on_train_begin(self, args, state, control, **kwargs):
        if not self.history:  # a resumed run's history (restored) holds its evaluations
            self._evaluate(state.global_step, control)

    def on_step_end(self, args, state, control, **kwargs):
        every = self.settings.every_steps
        if every > 0 and state.global_step % every == 0:
            self._evaluate(state.global_step, control)

    def on_train_end(self, args, state, control, **kwargs):
        if self._last_step != state.global_step:
            self._evaluate(state.global_step, control, final=True)
        elif self.history and self.trainer.accelerator.is_main_process:
            self.write_history(plot=True)  # the plot is drawn once, at the end

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, float]:
        """Sample, score and gather; the same metrics on every process."""
        if self.trainer is None:
            raise RuntimeError("call bind(trainer) before evaluating.")
        accelerator = self.trainer.accelerator
        s = self.settings
        n = len(self.prompts) * s.num_samples
        items = np.repeat(np.arange(len(self.prompts)), s.num_samples)
        with accelerator.split_between_processes(list(range(n)), apply_padding=True) as mine:
            mine = np.asarray(mine, dtype=np.int64)
            local = self._sample_and_score(items[mine], accelerator)
            rows = [(int(i), *fields) for i, fields in zip(mine, local, strict=True)]
        if accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            rows = gather_object(rows)
        by_index = {}
        for row in rows:
            by_index.setdefault(row[0], row[1:])
        ordered = [by_index[i] for i in range(n)]
        texts = [r[0] for r in ordered]
        finished = [r[1] for r in ordered]
        kl = np.asarray([r[2] for r in ordered], dtype=np.float64)
        tokens = np.asarray([r[3] for r in ordered], dtype=np.float64)
        learned = [r[4] for r in ordered]
        has_reward = all(v is not None for v in learned)
        G = s.num_samples

        def per_prompt(values):
            return [values[k * G : (k + 1) * G] for k in range(len(self.prompts))]

        scores = score_heldout_samples(
            self.prompts,
            per_prompt(texts),
            decoder=self.decoder,
            finished=per_prompt(finished),
            learned_rewards=per_prompt(learned) if has_reward else None,
            top_k_de=s.top_k_de,
            distance=s.distance,
        )
        metrics = dict(scores.metrics)
        metrics["heldout/kl"] = float(kl.mean())
        metrics["heldout/kl_per_token"] = float(kl.sum() / max(tokens.sum(), 1.0))
        self._per_prompt = scores.per_prompt
        return metrics

    def _sample_and_score(self, items: np.ndarray, accelerator) -> list[tuple]:
        s = self.settings
        tok = self.tokenizer
        device = accelerator.device
        seed = s.seed + 100_003 * accelerator.process_index
        reward_model = self.trainer.monitor_reward_model()
        constraint = getattr(self.trainer, "cell_constraint", None)  # the constrained policy
        with self.trainer.monitor_policy() as policy:
            sampled = sample_answers(
                policy,
                tok,
                self.prompt_ids,
                items,
                max_new_tokens=s.max_new_tokens,
                temperature=s.temperature,
                stop_ids=self.stop_ids,
                batch_size=s.batch_size,
                seed=seed,
                constraint=constraint,
            )
            common = {
                "pad_token_id": tok.pad_token_id,
                "temperature": s.temperature,
                "batch_size": s.batch_size,
                "device": device,
                "constraint": constraint,
            }
            policy_lp, lengths = answer_logprobs(
                policy, self.prompt_ids, items, sampled.completion_ids, **common
            )
            with self.trainer.monitor_reference(policy) as reference:
                reference_lp, _ = answer_logprobs(
                    reference, self.prompt_ids, items, sampled.completion_ids, **common
                )
        learned: Sequence = [None] * len(items)
        if reward_model is not None:
            learned = score_answer_ids(
                reward_model,
                self.prompt_ids,
                items,
                sampled.completion_ids,
                pad_token_id=tok.pad_token_id,
                batch_size=s.batch_size,
                device=device,
            ).tolist()
        kl = policy_lp - reference_lp
        return [
            (sampled.texts[k], bool(sampled.finished[k]), float(kl[k]), int(lengths[k]), learned[k])
            for k in range(len(items))
        ]

    def _evaluate(self, step: int, control, *, final: bool = False) -> None:
        start = time.perf_counter()
        metrics = self.evaluate()
        metrics["heldout/eval_seconds"] = time.perf_counter() - start
        decision = self.selector.update(step, metrics)
        metrics["heldout/eligible"] = float(decision.eligible)
        metrics["heldout/best_step"] = float(
            self.selector.best_step if self.selector.best_step is not None else -1
        )
        self._last_step = step
        log = logger.info if self.trainer.accelerator.is_main_process else logger.debug
        specific = metrics.get(SPECIFIC_KEY)
        log(
            "held-out step %d: pearson_delta %.3f%s, distinct %.3f, kl %.3f%s (%s)",
            step,
            metrics.get(FIDELITY_KEY, math.nan),
            f", pearson_specific {specific:.3f}" if specific is not None else "",
            metrics.get("heldout/distinct_fraction", math.nan),
            metrics.get("heldout/kl", math.nan),
            f", learned reward {metrics['heldout/learned_reward']:.3f}"
            if "heldout/learned_reward" in metrics
            else "",
            decision.reason,
        )
        self.trainer.log_heldout(dict(metrics))
        if decision.improved and self.best_dir is not None:
            self.trainer.save_model(str(self.best_dir))
        if decision.should_stop and not final:
            control.should_training_stop = True
        self.history.append(
            {
                "step": int(step),
                "metrics": metrics,
                "per_prompt": self._per_prompt,
                "decision": asdict(decision),
            }
        )
        if self.trainer.accelerator.is_main_process:
            self.write_history(plot=final)

    # ------------------------------------------------------------------ outputs
    def write_history(self, *, plot: bool = True) -> Path:
        """Write ``heldout_eval_history.json`` (and, with ``plot``, its plot) into the output
        directory. During training only the JSON is rewritten at each evaluation; the plot is
        drawn at the end (redrawing it every time cost more than the evaluation itself:
        benchmarks/figures/trainer_overhead.md)."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        payload = {
            "settings": asdict(self.settings),
            "prompts": [p.name for p in self.prompts],
            "selection": self.selector.to_dict(),
            "evaluations": self.history,
        }
        path = self.output_dir / HISTORY_FILENAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(_finite(payload), indent=1))
        tmp.replace(path)
        if plot:
            plot_heldout_history(
                self.history, self.output_dir / PLOT_FILENAME, best_step=self.best_step
            )
        return path


def plot_heldout_history(
    history: Sequence[dict], path: str | Path, *, best_step: int | None = None
) -> Path | None:
    """Held-out fidelity, learned reward, diversity and KL over training steps (PNG)."""
    if not history:
        return None
    from cellrlhf.figures import subplots

    steps = [h["step"] for h in history]

    def series(key):
        return [h["metrics"].get(key, math.nan) for h in history]

    fig, axes = subplots(1, 3, figsize=(13, 3.6))
    ax = axes[0]
    ax.plot(steps, series(FIDELITY_KEY), "o-", label="held-out pearson_delta (true)")
    top = next(
        (k for k in history[0]["metrics"] if k.startswith("heldout/pearson_delta_top")), None
    )
    if top:
        ax.plot(steps, series(top), "s--", label=top.split("/")[-1])
    if SPECIFIC_KEY in history[0]["metrics"]:
        ax.plot(steps, series(SPECIFIC_KEY), "d-", label="pearson_specific")
    if best_step is not None:
        ax.axvline(best_step, color="green", ls=":", label=f"kept (step {best_step})")
    ax.set_xlabel("step")
    ax.set_ylabel("fidelity")
    ax.set_title("true held-out fidelity")
    if "heldout/learned_reward" in history[0]["metrics"]:
        twin = ax.twinx()
        twin.plot(
            steps,
            series("heldout/learned_reward"),
            "^-",
            color="tab:red",
            alpha=0.6,
            label="learned reward (right axis)",
        )
        twin.set_ylabel("learned reward", color="tab:red")
        twin.legend(fontsize=7, loc="upper left")
    ax.legend(fontsize=7, loc="lower right")
    ax = axes[1]
    ax.plot(steps, series("heldout/distinct_fraction"), "o-", label="distinct sentences")
    ax.plot(steps, series("heldout/valid_fraction"), "s-", label="valid gene fraction")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("step")
    ax.set_title("diversity / validity")
    twin = ax.twinx()
    twin.plot(steps, series("heldout/token_entropy"), "^-", color="tab:purple", alpha=0.6)
    twin.set_ylabel("gene entropy (bits)", color="tab:purple")
    ax.legend(fontsize=7, loc="lower left")
    ax = axes[2]
    ax.plot(steps, series("heldout/kl"), "o-", label="KL to reference (per answer)")
    dist = next((k for k in history[0]["metrics"] if k.endswith("_to_real")), None)
    if dist:
        ax.plot(steps, series(dist), "s-", label=dist.split("/")[-1])
    ax.set_xlabel("step")
    ax.set_title("drift")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def _prompt_ids(tokenizer, messages) -> list[int]:
    from cellrlhf.ppo.prompt_tokenization import prompt_token_ids

    return prompt_token_ids(tokenizer, list(messages))


def _finite(value):
    """JSON-safe copy: NaN / inf become None."""
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value
