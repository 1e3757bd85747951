"""PPO checkpoints that resume exactly: what is saved, how it is checked and restored.

A PPO checkpoint (``<output_dir>/checkpoint-<update>``, written atomically through
:mod:`cellrlhf.sft.checkpoints`: staged, stamped with its marker, renamed) holds

- ``policy_and_value.safetensors``: the trained policy and value model (TRL's
  ``PolicyAndValueWrapper``; LoRA policies with their adapters);
- ``optimizer.pt`` and ``scheduler.pt``: their state dicts (read back with ``weights_only``);
- ``rng_state_<process>.pth``: python, numpy, torch (and CUDA) RNG states of every process, and
  those at the start of the current pass over the prompts, with the sampler's generator;
- ``trainer_state.json``: TRL's trainer state (``global_step``, ``episode``, log history);
- ``ppo_state.json``: the update, the episode, the batches drawn in the current pass, the run's
  signature (updates, batch sizes, models), the held-out monitor's selection state and the
  phase timings.

Resuming loads the weights, optimizer and scheduler, refuses a checkpoint of another
configuration (:class:`PPOResumeError`, naming every difference), and hands back a
:class:`ResumePoint`. The trainer (:class:`cellrlhf.ppo.ppo_trainer.CellPPOTrainer`) restores the
counters when training begins and replays the prompt order: the pass is restarted from its
saved RNG state, the batches already used are skipped, then every RNG is set to its saved state.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from cellrlhf.sft.checkpoints import (
    STAGING_DIRNAME,
    CheckpointError,
    clear_staging,
    list_checkpoints,
    publish_checkpoint,
    write_checkpoint_marker,
)

__all__ = [
    "WEIGHTS_NAME",
    "STATE_NAME",
    "PPOResumeError",
    "LoaderPosition",
    "ResumePoint",
    "capture_rng_states",
    "restore_rng_states",
    "run_signature",
    "save_ppo_checkpoint",
    "load_ppo_checkpoint",
    "restore_trainer_state",
    "prepare_fresh_start",
]

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "policy_and_value.safetensors"
STATE_NAME = "ppo_state.json"
OPTIMIZER_NAME = "optimizer.pt"
SCHEDULER_NAME = "scheduler.pt"
TRAINER_STATE_NAME = "trainer_state.json"
_RNG_NAME = "rng_state_{}.pth"
_FORMAT = "cellrlhf.ppo_checkpoint"
_SIGNATURE_ARGS = (
    "num_total_batches",
    "total_episodes",
    "batch_size",
    "world_size",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "num_mini_batches",
    "num_ppo_epochs",
)


class PPOResumeError(CheckpointError):
    """A PPO checkpoint that this run cannot continue from."""


@dataclass
class LoaderPosition:
    """Where the prompt loader is: RNG states at the start of its current pass, batches drawn."""

    pass_rng: dict | None = None
    batches: int = 0


@dataclass
class ResumePoint:
    """A loaded checkpoint: what is restored when training begins and at the first batch."""

    checkpoint: Path
    step: int
    trainer_state: dict
    loader: LoaderPosition
    rng: dict
    monitor: dict | None = None
    phase_timing: list = field(default_factory=list)


def capture_rng_states(generator: torch.Generator | None = None) -> dict:
    """python, numpy, torch (CPU and CUDA) RNG states, and ``generator``'s, as plain objects."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (global state)
    states = {
        "python": random.getstate(),
        "numpy": (kind, keys.tolist(), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    if generator is not None:
        states["generator"] = generator.get_state()
    return states


def restore_rng_states(states: dict, generator: torch.Generator | None = None) -> None:
    """Set every RNG captured by :func:`capture_rng_states` back to its state."""
    random.setstate(states["python"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    torch.set_rng_state(states["torch"])
    if states["cuda"]:
        torch.cuda.set_rng_state_all(states["cuda"])
    if generator is not None and "generator" in states:
        generator.set_state(states["generator"])


def run_signature(trainer) -> dict:
    """What must match for a checkpoint to continue this run: updates, batch sizes, models."""
    args = trainer.args
    signature = {name: getattr(args, name, None) for name in _SIGNATURE_ARGS}
    signature["train_prompts"] = int(trainer.train_dataset_len)
    wrapper = trainer.accelerator.unwrap_model(trainer.model)
    for name, model in (
        ("policy", wrapper.policy),
        ("value_model", wrapper.value_model),
        ("reward_model", trainer.reward_model),
    ):
        shapes = "\n".join(f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items())
        path = getattr(getattr(model, "config", None), "name_or_path", "") or ""
        signature[name] = {
            "path": str(Path(path).expanduser().resolve()) if path else "",
            "parameters": hashlib.sha256(shapes.encode()).hexdigest()[:16],
        }
    return signature


def save_ppo_checkpoint(trainer, position: LoaderPosition) -> Path:
    """Write ``checkpoint-<global_step>`` atomically (every process takes part)."""
    accelerator, args, state = trainer.accelerator, trainer.args, trainer.state
    output_dir = Path(args.output_dir)
    name = f"checkpoint-{state.global_step}"
    staged, final = output_dir / STAGING_DIRNAME / name, output_dir / name
    if args.should_save:
        shutil.rmtree(staged, ignore_errors=True)
        staged.mkdir(parents=True)
    accelerator.wait_for_everyone()
    if args.should_save:
        from safetensors.torch import save_model

        save_model(accelerator.unwrap_model(trainer.model), str(staged / WEIGHTS_NAME))
        torch.save(trainer.optimizer.state_dict(), staged / OPTIMIZER_NAME)
        torch.save(trainer.lr_scheduler.state_dict(), staged / SCHEDULER_NAME)
        state.save_to_json(str(staged / TRAINER_STATE_NAME))
        record = {
            "format": _FORMAT,
            "step": int(state.global_step),
            "episode": int(state.episode),
            "loader_batches": int(position.batches),
            "signature": run_signature(trainer),
            "monitor": _monitor_state(trainer),
            "phase_timing": trainer.phase_timer.history,
        }
        (staged / STATE_NAME).write_text(json.dumps(record, indent=1, default=_plain))
    rng = {"rng": capture_rng_states(_generator(trainer)), "pass_rng": position.pass_rng}
    torch.save(rng, staged / _RNG_NAME.format(accelerator.process_index))
    accelerator.wait_for_everyone()
    if args.should_save:
        from transformers.trainer_utils import rotate_checkpoints

        write_checkpoint_marker(staged, step=int(state.global_step))
        publish_checkpoint(staged, final)
        rotate_checkpoints(str(output_dir), save_total_limit=args.save_total_limit)
    accelerator.wait_for_everyone()
    return final


def load_ppo_checkpoint(trainer, checkpoint: str | Path) -> ResumePoint:
    """Check ``checkpoint`` against this run, load weights, optimizer and scheduler.

    Raises
    ------
    PPOResumeError
        When the checkpoint is not a cellrlhf PPO checkpoint or was written by a run with other
        updates, batch sizes or models.
    """
    checkpoint = Path(checkpoint)
    if trainer.is_deepspeed_enabled:
        raise PPOResumeError(
            f"PPO cannot resume from {checkpoint} under DeepSpeed; run without it, or pass "
            "--overwrite_output_dir (or --resume_from_checkpoint none) to start over."
        )
    record = _read_record(checkpoint)
    _check_signature(record["signature"], run_signature(trainer), checkpoint)
    from safetensors.torch import load_model

    accelerator = trainer.accelerator
    wrapper = accelerator.unwrap_model(trainer.model)
    load_model(wrapper, checkpoint / WEIGHTS_NAME, strict=True, device=str(accelerator.device))
    trainer.optimizer.load_state_dict(_load(checkpoint / OPTIMIZER_NAME))
    trainer.lr_scheduler.load_state_dict(_load(checkpoint / SCHEDULER_NAME))
    rng_file = checkpoint / _RNG_NAME.format(accelerator.process_index)
    if not rng_file.is_file():
        raise PPOResumeError(
            f"{checkpoint} has no {rng_file.name}: it was saved by fewer processes."
        )
    rng = _load(rng_file)
    return ResumePoint(
        checkpoint=checkpoint,
        step=int(record["step"]),
        trainer_state=json.loads((checkpoint / TRAINER_STATE_NAME).read_text()),
        loader=LoaderPosition(rng["pass_rng"], int(record["loader_batches"])),
        rng=rng["rng"],
        monitor=record.get("monitor"),
        phase_timing=list(record.get("phase_timing") or []),
    )


def restore_trainer_state(trainer, point: ResumePoint, *, max_steps: int) -> None:
    """Counters, log history, held-out monitor and timings as they were at the checkpoint.

    Called when training begins, after TRL reset the state to step 0; ``max_steps`` is the
    run's full number of updates (step counts given as fractions are recomputed from it).
    """
    state, saved, args = trainer.state, point.trainer_state, trainer.args
    for key in ("global_step", "episode", "epoch", "total_flos", "log_history"):
        if key in saved:
            setattr(state, key, saved[key])
    state.max_steps = max_steps
    if getattr(args, "num_sample_generations", 0) > 0:
        logger.warning(
            "TRL's sample generations draw random numbers after each checkpoint is saved: with "
            "num_sample_generations > 0 the resumed run is not identical to an uninterrupted one."
        )
    for key in ("logging_steps", "eval_steps", "save_steps"):
        value = getattr(args, key, None)
        if value is not None and value < 1:
            setattr(state, key, math.ceil(max_steps * value))
    trainer.phase_timer.history = list(point.phase_timing)
    monitor = _monitor(trainer)
    if monitor is not None and point.monitor is not None:
        _restore_monitor(monitor, point.monitor)
    logger.info(
        "PPO resumes from %s: update %d of %d, episode %d",
        point.checkpoint,
        point.step,
        max_steps,
        state.episode,
    )


def prepare_fresh_start(output_dir: str | Path) -> None:
    """Before training from update 0: remove interrupted saves and earlier runs' checkpoints
    (rotation would otherwise keep an earlier run's later checkpoints and drop this run's)."""
    clear_staging(output_dir)
    for checkpoint in list_checkpoints(output_dir):
        logger.warning("starting over: removing %s of an earlier run", checkpoint)
        shutil.rmtree(checkpoint, ignore_errors=True)


def _read_record(checkpoint: Path) -> dict:
    path = checkpoint / STATE_NAME
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise PPOResumeError(
            f"{checkpoint} is not a resumable cellrlhf PPO checkpoint ({path.name}: {err}); pass "
            "--overwrite_output_dir (or --resume_from_checkpoint none) to start over."
        ) from err
    if record.get("format") != _FORMAT:
        raise PPOResumeError(f"{path} is not a cellrlhf PPO checkpoint record.")
    return record


def _check_signature(saved: dict, current: dict, checkpoint: Path) -> None:
    differences = [
        f"{key} {saved.get(key)!r} (checkpoint) vs {current.get(key)!r} (this run)"
        for key in sorted(set(saved) | set(current))
        if saved.get(key) != current.get(key)
    ]
    if differences:
        raise PPOResumeError(
            f"cannot resume PPO from {checkpoint}: it was written with other settings: "
            + "; ".join(differences)
            + ". Re-run with the checkpoint's settings to continue it, or pass "
            "--overwrite_output_dir (or --resume_from_checkpoint none) to start over."
        )


def _plain(value):
    """numpy scalars and arrays in the monitor's history, as JSON values."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _load(path: Path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _generator(trainer) -> torch.Generator | None:
    return getattr(trainer.dataloader, "synchronized_generator", None)


def _monitor(trainer):
    from cellrlhf.ppo.heldout_monitor import HeldoutMonitor

    found = [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, HeldoutMonitor)]
    return found[0] if found else None


def _monitor_state(trainer) -> dict | None:
    monitor = _monitor(trainer)
    if monitor is None:
        return None
    selector = asdict(monitor.selector)
    return {"history": monitor.history, "selector": selector}


def _restore_monitor(monitor, saved: dict) -> None:
    from cellrlhf.ppo.model_selection import SelectionDecision

    selector = monitor.selector
    state = saved["selector"]
    for key in ("baseline", "best_step", "best_fidelity", "evaluations_since_best"):
        setattr(selector, key, state[key])
    selector.decisions = [SelectionDecision(**d) for d in state["decisions"]]
    monitor.history = list(saved["history"])
    monitor._last_step = monitor.history[-1]["step"] if monitor.history else None
