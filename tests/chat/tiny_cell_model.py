"""A tiny cell language model directory in the saved-model contract, trained in seconds.

Cells: scanpy's pbmc68k_reduced (700 PBMCs, 765 genes, log-normalized), the same cells the chat
apps offer as their example. The model (a 2-layer Llama, hidden size 64, the cell tokenizer) is
trained for 120 steps on the task prompts rendered by :class:`TaskPrompts` (the data
stage's templates): cell annotation, cell generation, and a synthetic perturbation response
(CRISPRa of a target puts it at the top of the cell sentence). It is small, but its answers are
learned, not noise: annotations name real labels, generated cells are valid sentences.

Imported by ``tests/chat/conftest.py`` and ``tests/hub/conftest.py``; built once per session.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TOP_K = 12
TARGETS = ("SPI1", "CD79A", "NKG7")
UNKNOWN_TARGET = "KLF1"  # not a measured gene: the model has no word for it
PERTURBATION_TYPE = "CRISPRa"
N_STEPS = 120
BATCH = 12
LR = 1e-2
SEED = 0


def pbmc_cells():
    """The example cells (skips the calling test when scanpy is missing)."""
    import pytest

    pytest.importorskip("scanpy")
    from cellrlhf.chat.example_data import example_cells

    return example_cells()


def _examples(prompts, sentences, labels, rng):
    from cellrlhf.cell2text.markup import format_cell

    convs = []
    for sentence, label in zip(sentences, labels, strict=True):
        convs.append(prompts.annotation(sentence) + [_assistant(prompts.annotation_answer(label))])
        convs.append(prompts.generation(label) + [_assistant(format_cell(sentence))])
        target = TARGETS[int(rng.integers(len(TARGETS)))]
        response = [target] + [g for g in sentence.split() if g != target]
        convs.append(
            prompts.perturbation_response(
                sentence, [target], cell_context=label, perturbation_type=PERTURBATION_TYPE
            )
            + [_assistant(format_cell(" ".join(response[:TOP_K])))]
        )
    return convs


def _assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def _tokenize(tokenizer, conversations):
    """Input ids and the number of prompt tokens (the loss covers the answer and its end)."""
    prompts = [
        tokenizer.apply_chat_template(c[:-1], tokenize=False, add_generation_prompt=True)
        for c in conversations
    ]
    fulls = [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations]
    ids = tokenizer(fulls, add_special_tokens=False)["input_ids"]
    n_prompt = [len(p) for p in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    return list(zip(ids, n_prompt, strict=True))


def _train(model, tokenizer, rows, *, steps: int, seed: int) -> list[float]:
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    pad = tokenizer.pad_token_id
    losses = []
    model.train()
    for step in range(steps):
        batch = [rows[i] for i in rng.choice(len(rows), size=BATCH, replace=False)]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, (ids, n_prompt) in enumerate(batch):
            input_ids[r, : len(ids)] = torch.tensor(ids)
            mask[r, : len(ids)] = 1
            labels[r, n_prompt : len(ids)] = torch.tensor(ids[n_prompt:])
        for group in opt.param_groups:
            group["lr"] = LR * min(1.0, (step + 1) / 10) * (1 - step / steps) + 2e-4
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def build_tiny_model(out: Path) -> Path:
    """Write the model directory to ``out`` (reused when already complete)."""
    out = Path(out)
    if (out / "cellrlhf.json").is_file():
        return out
    import torch
    import yaml
    from transformers import LlamaConfig, LlamaForCausalLM

    from cellrlhf.cell2text.decoder import ExpressionDecoder
    from cellrlhf.cell2text.tokenizer import build_cell_tokenizer
    from cellrlhf.cell2text.vocab import GeneVocab
    from cellrlhf.chat.cell_input import encode_cells
    from cellrlhf.chat.prompts import TaskPrompts

    torch.set_num_threads(1)
    adata = pbmc_cells()
    vocab = GeneVocab.from_adata(adata)
    decoder = ExpressionDecoder.fit(adata, top_k=TOP_K, seed=SEED)
    prompts = TaskPrompts()
    sentences = encode_cells(adata, vocab, top_k=TOP_K, seed=SEED).sentences
    labels = [str(v) for v in adata.obs["cell_type"]]
    rng = np.random.default_rng(SEED)
    conversations = _examples(prompts, sentences, labels, rng)
    # the tokenizer's text pieces are fitted on prompts and the labels (as the SFT stage does)
    texts = [m["content"] for conv in conversations[:60] for m in conv[:2]] + labels
    # UNKNOWN_TARGET gets no token: the tests use it as a target the model has no word for
    tokenizer = build_cell_tokenizer(vocab, texts=texts)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(SEED)  # the initial weights must not depend on which tests ran before
    model = LlamaForCausalLM(config)
    rows = _tokenize(tokenizer, conversations)
    losses = _train(model, tokenizer, rows, steps=N_STEPS, seed=SEED)

    tmp = out.with_name(out.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    vocab.save(tmp)
    decoder.save(tmp)
    (tmp / "training_config.yaml").write_text(
        yaml.safe_dump(
            {"steps": N_STEPS, "batch_size": BATCH, "lr": LR, "seed": SEED, "top_k": TOP_K}
        )
    )
    # the data stage's manifest keys that the chat reads
    manifest = {
        "format": "cellrlhf.dataset",
        "name": "pbmc68k_reduced-tiny",
        "simulated": False,
        "source": {"path": "pbmc68k_reduced.h5ad"},
        "perturbation_targets": list(TARGETS),
        "cell_contexts": sorted(set(labels)),
        "config": {
            "schema": {"columns": {"perturbation_type": {"value": PERTURBATION_TYPE}}},
            "sft": {"context_noun": "cell_type"},
        },
        "templates": {
            name: {"version": t.version, "sha256": t.sha256}
            for name, t in prompts.templates.items()
        },
    }
    (tmp / "data_manifest.json").write_text(json.dumps(manifest, indent=1))
    (tmp / "eval_results.json").write_text(
        json.dumps({"dataset": "pbmc68k_reduced-tiny", "metrics": {"final_loss": losses[-1]}})
    )
    info = {
        "format": "cellrlhf.model",
        "version": 1,
        "stage": "sft",
        "tokenizer_mode": "gene_tokens",
        "base_model": None,
        "first_loss": float(np.mean(losses[:5])),
        "final_loss": float(np.mean(losses[-20:])),
    }
    (tmp / "cellrlhf.json").write_text(json.dumps(info, indent=1))
    tmp.rename(out)
    return out
