"""Write the RL stage's model directory, like every stage's, from the policy that was kept.

The output directory holds the *selected* policy (best held-out fidelity with diversity intact,
see :mod:`cellrlhf.ppo.model_selection`; or the last one when selection is off), as full
weights (LoRA adapters merged into the SFT model), with the SFT tokenizer and chat template,
``gene_vocab.json``, ``expression_decoder.json``, ``data_manifest.json`` and (a build with
evidence) ``evidence_index.json`` from the data set,
``training_config.yaml`` and ``cellrlhf.json`` (``stage``, ``selected_step``, the held-out
figures of the kept policy, ...). The last policy, when it is not the kept one, goes to
``<output_dir>/last`` in the same form. The held-out history (``heldout_eval_history.json``,
``heldout_eval.png``) and per-step timings (``phase_timing.json``) sit beside them.

Files are assembled in ``<output_dir>/.staging`` and moved in with ``cellrlhf.json`` last, so
a directory with ``cellrlhf.json`` is complete.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from cellrlhf.data.layout import EVIDENCE_INDEX_FILENAME, DatasetDir
from cellrlhf.sft.checkpoints import STAGING_DIRNAME
from cellrlhf.sft.model_dir import MODEL_INFO_FILENAME, load_model_info, write_model_files

__all__ = ["BEST_DIRNAME", "LAST_DIRNAME", "STAGING_DIRNAME", "save_policy_dir"]

logger = logging.getLogger(__name__)

BEST_DIRNAME = "best"
LAST_DIRNAME = "last"
_WEIGHT_FILES = ("config.json", "generation_config.json")


def save_policy_dir(
    trainer,
    output_dir: str | Path,
    *,
    sft_dir: str | Path,
    dataset: DatasetDir,
    info: dict,
    run_config: dict,
    selected_step: int | None,
    last_step: int,
    best_dir: str | Path | None,
    keep_last: bool = True,
) -> Path:
    """Save the kept policy as a complete model directory; call on every process.

    Parameters
    ----------
    trainer
        The finished trainer (its live policy is the last one).
    output_dir
        The stage's output directory.
    sft_dir
        The SFT model the run started from (base of LoRA adapters, source of the tokenizer).
    dataset
        The data set directory (vocabulary, decoder, manifest are copied from it).
    info
        ``cellrlhf.json`` content (``stage``, ``tokenizer_mode``, ...).
    run_config
        All arguments of the run, written as ``training_config.yaml``.
    selected_step
        Step of the kept policy (``None`` or ``last_step``: the live policy is kept).
    last_step
        The final training step.
    best_dir
        Where the monitor saved the kept policy (used when ``selected_step != last_step``).
    keep_last
        Also write the last policy to ``<output_dir>/last`` when it is not the kept one.
    """
    output_dir = Path(output_dir)
    staging = output_dir / STAGING_DIRNAME
    accelerator = trainer.accelerator
    use_best = selected_step is not None and selected_step != last_step
    if use_best and (best_dir is None or not Path(best_dir).is_dir()):
        raise FileNotFoundError(f"the kept policy of step {selected_step} is missing ({best_dir}).")
    if trainer.args.should_save:
        shutil.rmtree(staging, ignore_errors=True)
    accelerator.wait_for_everyone()
    raw_last = staging / "raw_last"
    if not use_best or keep_last:
        trainer.save_model(str(raw_last))  # every process: DeepSpeed gathers the weights
    accelerator.wait_for_everyone()
    if trainer.args.should_save:
        kept_step = selected_step if use_best else last_step
        kept = _materialize(
            Path(best_dir) if use_best else raw_last, staging / "kept", sft_dir=Path(sft_dir)
        )
        files = dict(
            dataset=dataset, run_config=run_config, card_name=str(info.get("stage", "policy"))
        )
        write_model_files(kept, info={**info, "selected_step": kept_step}, **files)
        if use_best and keep_last:
            last = _materialize(raw_last, staging / LAST_DIRNAME, sft_dir=Path(sft_dir))
            note = "last policy, not the kept one"
            write_model_files(
                last, info={**info, "selected_step": last_step, "note": note}, **files
            )
            target = output_dir / LAST_DIRNAME
            shutil.rmtree(target, ignore_errors=True)
            os.replace(last, target)
        _publish(kept, output_dir)
        load_model_info(output_dir)  # the written directory must read back as a model directory
        shutil.rmtree(staging, ignore_errors=True)
        if best_dir is not None:  # the kept policy now lives in output_dir itself
            shutil.rmtree(best_dir, ignore_errors=True)
        logger.info("policy of step %d saved to %s", kept_step, output_dir)
    accelerator.wait_for_everyone()
    return output_dir


def _materialize(raw: Path, target: Path, *, sft_dir: Path) -> Path:
    """Full weights in ``target``: copied, or LoRA adapters merged into the SFT model."""
    from transformers import AutoTokenizer

    target.mkdir(parents=True, exist_ok=True)
    if (raw / "adapter_config.json").exists():
        from peft import PeftModel

        from cellrlhf.ppo.model_loading import load_policy

        base, _, _ = load_policy(sft_dir)
        merged = PeftModel.from_pretrained(base, str(raw)).merge_and_unload()
        merged.save_pretrained(str(target), safe_serialization=True)
    else:
        weights = sorted(raw.glob("model*.safetensors")) + sorted(
            raw.glob("model*.safetensors.index.json")
        )
        if not weights:
            raise FileNotFoundError(
                f"no model.safetensors was written to {raw}. Under DeepSpeed ZeRO-3 set "
                "`zero3_save_16bit_model: true` in the accelerate config."
            )
        for path in [*weights, *(raw / name for name in _WEIGHT_FILES)]:
            if path.exists():
                shutil.copy2(path, target / path.name)
    # the SFT tokenizer, exactly as saved (RL changes no token)
    AutoTokenizer.from_pretrained(str(sft_dir)).save_pretrained(str(target))
    return target


def _publish(staged: Path, output_dir: Path) -> None:
    """Move the staged files into ``output_dir``, ``cellrlhf.json`` last."""
    output_dir.mkdir(parents=True, exist_ok=True)
    marker = output_dir / MODEL_INFO_FILENAME
    if marker.exists():
        marker.unlink()
    for stale in output_dir.glob("model*.safetensors*"):
        stale.unlink()
    stale_evidence = output_dir / EVIDENCE_INDEX_FILENAME
    if stale_evidence.exists() and not (staged / EVIDENCE_INDEX_FILENAME).exists():
        stale_evidence.unlink()  # an earlier run's, on other data
    for entry in sorted(staged.iterdir(), key=lambda p: p.name == MODEL_INFO_FILENAME):
        os.replace(entry, output_dir / entry.name)
