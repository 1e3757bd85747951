"""Per-step overhead of cellrlhf's trainers against the same TRL trainers used directly.

    OMP_NUM_THREADS=1 python benchmarks/bench_trainer_overhead.py

In one process, interleaved (arm order reversed every other repeat, so slow drift of the shared
machine cancels), times every optimizer step of:

- SFT: :class:`cellrlhf.sft.trainer.CellSFTTrainer` built as ``cellrlhf sft`` builds it
  (``configs/sft/tiny.yaml``: model, tokenizer and splits from the stage's own functions) against
  :class:`trl.SFTTrainer` on the same model weights, tokenizer, training split and arguments
  (every :class:`trl.SFTConfig` field copied). The project arm runs with its perturbation dropout
  as configured and without it, to attribute the difference.
- GRPO: :class:`cellrlhf.ppo.grpo_trainer.CellGRPOTrainer` built by ``cellrlhf grpo``'s own
  :func:`cellrlhf.ppo.grpo.build_run` (``configs/ppo/grpo_tiny.yaml``, fidelity reward) with the
  held-out monitor off and on, unconstrained and constrained, against :class:`trl.GRPOTrainer`
  on the same SFT policy, prompts, reward function, ``num_generations`` and
  ``max_completion_length`` (every :class:`trl.GRPOConfig` field copied).

A step is the time between consecutive ``on_step_end`` callbacks (a callback added last, so it
covers the data, the step, logging and every callback, the held-out monitor included); the first
``--warmup`` steps of each run are dropped. The ratio of a repeat is project / TRL of that repeat;
the page reports the median ratio over repeats and its range. Reward time is the time spent in
the reward function (the project's phase timer; a timing wrapper on the TRL side).

Writes ``benchmarks/results/trainer_overhead.csv`` (one row per arm and repeat) and
``benchmarks/figures/trainer_overhead.md``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import copy  # noqa: E402
import csv  # noqa: E402
import dataclasses  # noqa: E402
import datetime as dt  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIGURES = REPO / "benchmarks" / "figures"
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO))

COMMAND = "OMP_NUM_THREADS=1 python benchmarks/bench_trainer_overhead.py"
VERDICT = "## Verdict"


# ---------------------------------------------------------------------- measuring
def step_clock():
    """A callback recording ``perf_counter`` at every ``on_step_end``."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.ends: list[float] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

    return StepClock()


def timed_reward(func):
    """``func`` with the wall time of each call appended to ``.seconds`` (TRL reads ``__name__``)."""

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            wrapper.seconds.append(time.perf_counter() - start)

    wrapper.seconds = []
    wrapper.__name__ = getattr(func, "__name__", type(func).__name__)
    return wrapper


def run_timed(trainer, warmup: int) -> tuple[float, float, int]:
    """Train; mean and median seconds per step after ``warmup`` steps, and the steps measured."""
    from transformers.trainer_callback import PrinterCallback

    clock = step_clock()
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(clock)
    trainer.train()
    ends = clock.ends
    intervals = [b - a for a, b in zip(ends[warmup - 1 : -1], ends[warmup:], strict=True)]
    return statistics.fmean(intervals), statistics.median(intervals), len(intervals)


@contextlib.contextmanager
def monitor_plot(mode: str | None, calls: dict[int, float]):
    """Diagnostics of the held-out monitor's plot (drawn at every evaluation): ``"timed"``
    records its seconds per step in ``calls``; ``"off"`` skips it (benchmark only, the package
    is untouched); ``None`` leaves it alone."""
    if mode is None:
        yield
        return
    from unittest import mock

    from cellrlhf.ppo import heldout_monitor

    original = heldout_monitor.plot_heldout_history

    def timed(history, *args, **kwargs):
        start = time.perf_counter()
        try:
            return original(history, *args, **kwargs)
        finally:
            step = int(history[-1]["step"]) if history else -1
            calls.setdefault(step, time.perf_counter() - start)

    replacement = timed if mode == "timed" else (lambda *args, **kwargs: None)
    with mock.patch.object(heldout_monitor, "plot_heldout_history", replacement):
        yield


def copy_config(args, config_cls, **overrides):
    """A plain TRL config with every init field of ``config_cls`` taken from ``args``."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls) if f.init}
    values.update(overrides)
    return config_cls(**values)


# ---------------------------------------------------------------------- SFT
class SFTBench:
    """The SFT stage's pieces, built once; each call builds a fresh trainer on a copy."""

    def __init__(self, data: Path, out: Path, steps: int) -> None:
        from cellrlhf.data.layout import open_dataset_dir
        from cellrlhf.sft.model_factory import build_model_and_tokenizer
        from cellrlhf.sft.sft import make_parser
        from cellrlhf.sft.training_run import load_training_splits, tokenizer_texts

        script, args, model_args = make_parser().parse_args_and_config(
            [
                "--config",
                str(REPO / "configs/sft/tiny.yaml"),
                "--model_config",
                str(REPO / "configs/model/tiny.yaml"),
                "--dataset_dir",
                str(data),
                "--output_dir",
                str(out),
                "--max_steps",
                str(steps),
                "--eval_strategy",
                "no",
                "--save_strategy",
                "no",
                "--logging_steps",
                str(10 * steps),
                "--report_to",
                "none",
                "--disable_tqdm",
                "true",
                "--eval_generation_samples",
                "0",
            ]
        )
        dataset = open_dataset_dir(data)
        self.train, _ = load_training_splits("sft", dataset, script, seed=args.seed)
        self.bundle = build_model_and_tokenizer(
            model_args, args, dataset, texts=lambda: tokenizer_texts(dataset)
        )
        self.args = args

    def project(self, dropout: bool):
        from cellrlhf.sft.perturbation_dropout import (
            PerturbationDropout,
            PerturbationDropoutCallback,
        )
        from cellrlhf.sft.trainer import CellSFTTrainer

        args = copy.deepcopy(self.args)
        dropper, callbacks = None, []
        if dropout and args.perturbation_dropout > 0:  # as training_run.train_stage builds it
            dropper = PerturbationDropout(
                self.bundle.tokenizer, probability=args.perturbation_dropout, seed=args.seed
            )
            callbacks.append(PerturbationDropoutCallback(dropper))
        return CellSFTTrainer(
            model=copy.deepcopy(self.bundle.model),
            args=args,
            train_dataset=self.train,
            processing_class=self.bundle.tokenizer,
            callbacks=callbacks,
            perturbation_dropout=dropper,
        )

    def trl(self):
        from trl import SFTConfig, SFTTrainer

        return SFTTrainer(
            model=copy.deepcopy(self.bundle.model),
            args=copy_config(self.args, SFTConfig),
            train_dataset=self.train,
            processing_class=self.bundle.tokenizer,
        )


# ---------------------------------------------------------------------- GRPO
class GRPOBench:
    """``cellrlhf grpo``'s run on the tiny config, and TRL's trainer on the same pieces."""

    def __init__(self, data: Path, sft_dir: Path, out: Path, steps: int, monitor_every: int):
        self.data, self.sft_dir, self.out = data, sft_dir, out
        self.steps, self.monitor_every = steps, monitor_every

    def parse(self, *extra: str):
        from cellrlhf.ppo.grpo import make_parser

        return make_parser("grpo").parse_args_and_config(
            [
                "--config",
                str(REPO / "configs/ppo/grpo_tiny.yaml"),
                "--dataset_dir",
                str(self.data),
                "--model_name_or_path",
                str(self.sft_dir),
                "--output_dir",
                str(self.out),
                "--overwrite_output_dir",
                "true",
                "--max_steps",
                str(self.steps),
                "--logging_steps",
                str(10 * self.steps),
                "--disable_tqdm",
                "true",
                "--early_stopping_patience",
                str(10 * self.steps),  # the monitor must not stop a timed run
                *extra,
            ]
        )

    def project(self, *, monitor: bool, constrained: bool):
        from cellrlhf.ppo.grpo import build_run

        every = self.monitor_every if monitor else 0
        run = build_run(
            *self.parse(
                "--heldout_every_steps",
                str(every),
                "--constrain_cells",
                str(constrained).lower(),
            )
        )
        return run.trainer

    def trl(self):
        from trl import GRPOConfig, GRPOTrainer

        from cellrlhf.ppo.model_loading import load_policy
        from cellrlhf.ppo.reward_functions import build_reward_functions
        from cellrlhf.ppo.rl_run import open_rl_data

        script, args, model_args = self.parse("--heldout_every_steps", "0")
        data = open_rl_data(script, seed=args.seed)
        policy, tokenizer, _ = load_policy(self.sft_dir, dtype=model_args.dtype)
        funcs, _ = build_reward_functions(
            script.rewards,
            decoder=data.decoder,
            tokenizer=tokenizer,
            reward_model_path=None,
            fidelity_kwargs=script.fidelity_reward_kwargs,
            dtype=model_args.dtype,
            specific_weight=script.specific_weight,
            train_rows=None,
        )
        self.trl_rewards = [timed_reward(f) for f in funcs]
        return GRPOTrainer(
            model=policy,
            reward_funcs=self.trl_rewards,
            args=copy_config(args, GRPOConfig, generation_batch_size=None),  # derived again
            train_dataset=data.train,
            processing_class=tokenizer,
        )


# ---------------------------------------------------------------------- the run
def prepare(work: Path, sft_model_steps: int) -> tuple[Path, Path]:
    from tests.fixtures.sim_data import build_sim_dataset
    from tests.fixtures.tiny_model import train_tiny_sft

    data = build_sim_dataset(work / "data")
    sft_dir = train_tiny_sft(data, work / "sft_model", steps=sft_model_steps)
    return data, sft_dir


def arms(sft: SFTBench, grpo: GRPOBench) -> dict[str, tuple[str, object, str | None]]:
    """name -> (pair, factory, monitor plot mode). The ``*_trl`` arm of a pair is its baseline."""
    return {
        "sft_trl": ("sft", sft.trl, None),
        "sft_cell": ("sft", lambda: sft.project(dropout=True), None),
        "sft_cell_no_dropout": ("sft", lambda: sft.project(dropout=False), None),
        "grpo_trl": ("grpo", grpo.trl, None),
        "grpo_cell": ("grpo", lambda: grpo.project(monitor=False, constrained=False), None),
        "grpo_cell_constrained": (
            "grpo",
            lambda: grpo.project(monitor=False, constrained=True),
            None,
        ),
        "grpo_cell_monitor": (
            "grpo",
            lambda: grpo.project(monitor=True, constrained=False),
            "timed",
        ),
        "grpo_cell_monitor_noplot": (
            "grpo",
            lambda: grpo.project(monitor=True, constrained=False),
            "off",
        ),
    }


PHASES = ("generation", "reward", "logprobs", "update", "other")
PARTS = (*PHASES, "monitor", "plot")


def components(name: str, trainer, grpo: GRPOBench, warmup: int, measured: int) -> dict:
    """Mean ms per measured step of each GRPO phase (project: its phase timer; TRL: the reward
    only) and of the held-out monitor's evaluations; empty for SFT arms."""
    out = {f"{p}_ms": "" for p in PARTS}
    if name == "grpo_trl":
        calls = [sum(c) for c in zip(*(f.seconds for f in grpo.trl_rewards), strict=True)]
        out["reward_ms"] = 1000 * statistics.fmean(calls[warmup:])
    elif name.startswith("grpo_cell"):
        records = trainer.phase_timer.history[warmup:]
        for phase in PHASES:
            out[f"{phase}_ms"] = 1000 * statistics.fmean(r.get(phase, 0.0) for r in records)
        monitors = [c for c in trainer.callback_handler.callbacks if hasattr(c, "history")]
        by_step = {}  # the final evaluation repeats the last step's: count it once
        for m in monitors:
            for h in m.history:
                if warmup < h["step"] <= warmup + measured and h["step"] not in by_step:
                    by_step[h["step"]] = h["metrics"].get("heldout/eval_seconds", 0.0)
        seconds = sum(by_step.values())
        out["monitor_ms"] = 1000 * seconds / measured
    return out


def measure(args) -> list[dict]:
    import torch

    torch.set_num_threads(1)
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench_overhead_") as tmp:
        work = Path(tmp)
        data, sft_dir = prepare(work, args.sft_model_steps)
        total = args.warmup + args.steps
        sft = SFTBench(data, work / "sft_out", args.sft_factor * total)
        grpo = GRPOBench(data, sft_dir, work / "grpo_out", total, args.monitor_every)
        table = arms(sft, grpo)
        names = [n for n in table if not args.only or table[n][0] in args.only]
        rows = []
        for repeat in range(args.repeats):
            order = names if repeat % 2 == 0 else names[::-1]
            for name in order:
                pair, factory, plot_mode = table[name]
                torch.manual_seed(0)
                plots: dict[int, float] = {}
                warm = args.warmup * (args.sft_factor if pair == "sft" else 1)
                with monitor_plot(plot_mode, plots):
                    trainer = factory()
                    mean, median, measured = run_timed(trainer, warm)
                row = {
                    "repeat": repeat,
                    "pair": pair,
                    "arm": name,
                    "ms_per_step": 1000 * mean,
                    "ms_per_step_median": 1000 * median,
                    "steps_measured": measured,
                    **components(name, trainer, grpo, warm, measured),
                }
                if plot_mode == "timed":
                    window = [v for k, v in plots.items() if warm < k <= warm + measured]
                    row["plot_ms"] = 1000 * sum(window) / measured
                rows.append(row)
                print(f"repeat {repeat} {name:26s} {1000 * mean:8.1f} ms/step", flush=True)
                del trainer
    return rows


# ---------------------------------------------------------------------- report
def ratios(rows: list[dict], arm: str, base: str, key: str = "ms_per_step") -> list[float]:
    """Per-repeat ``key`` of ``arm`` over that of ``base``."""
    by = {(r["repeat"], r["arm"]): r[key] for r in rows}
    repeats = sorted({r["repeat"] for r in rows})
    return [by[k, arm] / by[k, base] for k in repeats if (k, arm) in by and (k, base) in by]


def _median(rows: list[dict], arm: str, key: str) -> str:
    values = [r[key] for r in rows if r["arm"] == arm and r[key] != ""]
    return f"{statistics.median(values):.1f}" if values else "-"


def _ratio_text(rows: list[dict], arm: str, base: str, key: str) -> str:
    if arm == base:
        return "1"
    rs = ratios(rows, arm, base, key)
    return f"{statistics.median(rs):.3f} ({min(rs):.3f}-{max(rs):.3f})"


def summary_lines(rows: list[dict]) -> list[str]:
    """The page's table: per arm, medians over repeats and the ratios to its TRL baseline."""
    lines = [
        "| arm | vs | ms / step | ratio (mean step) | ratio (median step) | "
        + " | ".join(PARTS)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(PARTS),
    ]
    for arm in dict.fromkeys(r["arm"] for r in rows):
        pair = next(r["pair"] for r in rows if r["arm"] == arm)
        base = f"{pair}_trl"
        cells = " | ".join(_median(rows, arm, f"{p}_ms") for p in PARTS)
        lines.append(
            f"| `{arm}` | {'-' if arm == base else f'`{base}`'} | "
            f"{_median(rows, arm, 'ms_per_step')} | "
            f"{_ratio_text(rows, arm, base, 'ms_per_step')} | "
            f"{_ratio_text(rows, arm, base, 'ms_per_step_median')} | {cells} |"
        )
    return lines


def write_outputs(rows: list[dict], args, seconds: float) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    csv_path = RESULTS / "trainer_overhead.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    import torch
    import transformers
    import trl

    today = dt.date.today().isoformat()
    lines = [
        "# Trainer overhead: cellrlhf trainers vs TRL used directly",
        "",
        f"Measured {today} on a {os.cpu_count()}-core {platform.machine()} CPU shared with other "
        f"jobs (noisy), torch {torch.__version__}, transformers {transformers.__version__}, "
        f"TRL {trl.__version__}; `torch.set_num_threads(1)`, `OMP_NUM_THREADS=1`. "
        f"{args.repeats} interleaved repeats (order reversed every other repeat), "
        f"{args.warmup} warm-up + {args.steps} measured GRPO steps per run "
        f"(SFT: x{args.sft_factor}); {seconds / 60:.1f} min in all.",
        "",
        f"    {COMMAND}",
        "",
        "Raw rows: `benchmarks/results/trainer_overhead.csv` (not committed).",
        "",
        "Columns after the ratios: ms per measured step of each phase of the project's timer "
        "(GRPO; TRL's arm: its reward function, timed by a wrapper), of the held-out monitor's "
        "sampling and scoring (`heldout/eval_seconds`) and of its plot. The median-step ratio "
        "means nothing for the monitor arms (the monitor runs every other step).",
        "",
        *summary_lines(rows),
        "",
    ]
    page = FIGURES / "trainer_overhead.md"
    kept = ""  # the hand-written verdict and notes below VERDICT survive a re-run
    if page.exists() and VERDICT in page.read_text():
        kept = page.read_text()[page.read_text().index(VERDICT) :]
    page.write_text("\n".join(lines) + ("\n" + kept if kept else ""))
    print("\n".join(lines))
    print(f"wrote {csv_path} and {page} (the verdict below {VERDICT!r} is kept, edit it by hand)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2, help="GRPO warm-up steps per run")
    parser.add_argument("--steps", type=int, default=20, help="GRPO steps measured per run")
    parser.add_argument("--sft_factor", type=int, default=10, help="SFT steps per GRPO step")
    parser.add_argument("--monitor_every", type=int, default=2, help="grpo_tiny.yaml's value")
    parser.add_argument("--sft_model_steps", type=int, default=4)
    parser.add_argument("--only", nargs="*", choices=("sft", "grpo"))
    args = parser.parse_args()
    start = time.perf_counter()
    rows = measure(args)
    write_outputs(rows, args, time.perf_counter() - start)


if __name__ == "__main__":
    main()
