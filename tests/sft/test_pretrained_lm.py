"""Starting from any causal LM: gene tokens added and initialised from the LM's own embeddings."""

from __future__ import annotations

import json

import pytest
import torch
from sft_helpers import parse, train

from cellrlhf.sft.gene_embedding_init import init_gene_embeddings, mean_piece_rows
from tests.fixtures.tiny_model import tiny_args, tiny_llama_config

CORPUS = [
    "The gene KLF1 drives erythroid differentiation; GATA1 and HBB follow.",
    "CD3E and CD8A mark T cells, MS4A1 and CD19 mark B cells.",
    "Predict a cell after activating a gene. What cell line is this cell?",
] * 20


@pytest.fixture(scope="module")
def text_lm(tmp_path_factory):
    """A tiny 'pretrained' causal LM with a byte-level BPE text tokenizer, saved like a Hub model."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|endoftext|>", bos_token="<|endoftext|>"
    )
    torch.manual_seed(0)
    config = tiny_llama_config(
        tokenizer,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
    )
    path = tmp_path_factory.mktemp("text_lm") / "lm"
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_mean_piece_rows_exact():
    weight = torch.arange(12, dtype=torch.float32).reshape(6, 2)
    targets, rows = mean_piece_rows(weight, {4: [0, 1], 5: [2], 3: []})
    assert targets.tolist() == [4, 5]
    torch.testing.assert_close(rows, torch.tensor([[1.0, 2.0], [4.0, 5.0]]))
    with pytest.raises(ValueError, match="outside"):
        mean_piece_rows(weight, {9: [0]})


def test_init_sets_input_and_untied_output_rows():
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(tiny_llama_config(vocab_size=10, hidden_size=8, intermediate_size=16))
    assert init_gene_embeddings(model, {9: [1, 2, 3]}) == 1
    for weight in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
        torch.testing.assert_close(weight[9], weight[[1, 2, 3]].mean(0))


def test_added_gene_tokens_start_from_their_text_pieces(text_lm, tiny_data, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from cellrlhf.data.layout import open_dataset_dir
    from cellrlhf.sft.model_factory import build_model_and_tokenizer

    script_args, training_args, model_args = parse(
        "sft",
        tiny_args(
            "sft",
            tiny_data,
            tmp_path,
            "--model_config",
            "none",
            "--model_name_or_path",
            str(text_lm),
        ),
    )
    bundle = build_model_and_tokenizer(model_args, training_args, open_dataset_dir(tiny_data))
    assert bundle.tokenizer_mode == "added_gene_tokens"
    base = AutoTokenizer.from_pretrained(text_lm)
    original = load_file(str(text_lm / "model.safetensors"))
    new_emb = bundle.model.get_input_embeddings().weight.detach()
    new_out = bundle.model.get_output_embeddings().weight.detach()
    checked = 0
    for gene in ("KLF1", "FOXA1", "CCR7"):
        pieces = base(" " + gene, add_special_tokens=False)["input_ids"]
        ids = bundle.tokenizer.encode(f"<cell> {gene} </cell>", add_special_tokens=False)
        token = [i for i in ids if bundle.tokenizer.convert_ids_to_tokens(i) == " " + gene]
        if len(pieces) < 2:
            continue  # already one base token: not added
        assert len(token) == 1 and token[0] >= len(base)
        torch.testing.assert_close(
            new_emb[token[0]], original["model.embed_tokens.weight"][pieces].mean(0)
        )
        torch.testing.assert_close(new_out[token[0]], original["lm_head.weight"][pieces].mean(0))
        checked += 1
    assert checked >= 2
    assert bundle.new_token_ids and min(bundle.new_token_ids) == len(base)


@pytest.mark.slow
def test_genes_as_text_sft_with_lora_and_added_embeddings(text_lm, tiny_data, tmp_path):
    out = tmp_path / "c2s"
    result = train(
        "sft",
        tiny_args(
            "sft",
            tiny_data,
            out,
            "--model_config",
            "none",
            "--model_name_or_path",
            str(text_lm),
            "--tokenizer_mode",
            "genes_as_text",
            "--max_steps",
            "3",
            "--eval_generation_samples",
            "2",
            "--eval_fidelity_perturbations",
            "0",
            "--use_peft",
            "true",
            "--lora_target_modules",
            "q_proj",
            "v_proj",
        ),
    )
    info = json.loads((out / "cellrlhf.json").read_text())
    assert info["tokenizer_mode"] == "genes_as_text" and info["peft"] == "merged"
    assert result.trainer.state.global_step == 3
    tokenizer = result.trainer.processing_class
    assert len(tokenizer.encode(" KLF1", add_special_tokens=False)) > 1  # genes stay text
    assert len(tokenizer.encode("<unk_pert>", add_special_tokens=False)) == 1
