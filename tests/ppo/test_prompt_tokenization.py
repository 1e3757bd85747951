import copy

import pytest
from tiny_rl_data import prompt

from cellrlhf.ppo.prompt_tokenization import (
    PromptTokenizationError,
    check_rl_tokenizer,
    prompt_token_ids,
    stop_token_ids,
    tokenize_prompts,
)


@pytest.fixture
def tokenizer(sft_tokenizer):
    return copy.deepcopy(sft_tokenizer)


def test_prompt_ids_end_with_the_generation_prompt(tokenizer):
    ids = prompt_token_ids(tokenizer, prompt("KLF1"))
    text = tokenizer.decode(ids, skip_special_tokens=False)
    assert text.startswith(tokenizer.bos_token)
    assert text.endswith("<|assistant|>\n")
    assert "<pert> KLF1 </pert>" in text
    assert ids == list(
        tokenizer.apply_chat_template(prompt("KLF1"), add_generation_prompt=True, tokenize=True)[
            "input_ids"
        ]
    )


def test_tokenized_dataset_has_only_input_ids_and_pads_left(tokenizer, rl_dataset_dir):
    from datasets import load_from_disk
    from transformers import DataCollatorWithPadding

    train = load_from_disk(str(rl_dataset_dir / "rl"))["train"]
    tokenized = tokenize_prompts(train, tokenizer)
    assert tokenized.column_names == ["input_ids"]
    assert len(tokenized) == len(train)
    assert tokenizer.padding_side == "left"
    batch = DataCollatorWithPadding(tokenizer)([tokenized[0], tokenized[1]])
    lengths = [len(tokenized[0]["input_ids"]), len(tokenized[1]["input_ids"])]
    width = max(lengths)
    for row, n in enumerate(lengths):
        assert batch["input_ids"][row, width - n :].tolist() == tokenized[row]["input_ids"]
        assert (batch["input_ids"][row, : width - n] == tokenizer.pad_token_id).all()

    kept = tokenize_prompts(train, tokenizer, keep_columns=["perturbation"])
    assert kept.column_names == ["perturbation", "input_ids"]


def test_long_prompts_are_dropped_or_refused(tokenizer, rl_dataset_dir, caplog):
    from datasets import load_from_disk

    train = load_from_disk(str(rl_dataset_dir / "rl"))["train"]
    lengths = sorted(len(prompt_token_ids(tokenizer, p)) for p in train["prompt"])
    cut = lengths[0]
    kept = tokenize_prompts(train, tokenizer, max_prompt_length=cut)
    assert len(kept) == sum(n <= cut for n in lengths)
    with pytest.raises(PromptTokenizationError, match="every prompt is longer"):
        tokenize_prompts(train, tokenizer, max_prompt_length=cut - 1)


def test_bad_prompts_are_refused_with_the_reason(tokenizer):
    with pytest.raises(PromptTokenizationError, match="ends with an assistant turn"):
        prompt_token_ids(tokenizer, [*prompt("KLF1"), {"role": "assistant", "content": "x"}])
    with pytest.raises(PromptTokenizationError, match="list of"):
        prompt_token_ids(tokenizer, ["just text"])
    with pytest.raises(PromptTokenizationError, match="pad token"):
        bad = prompt("KLF1")
        bad[1]["content"] += f" {tokenizer.pad_token}"
        prompt_token_ids(tokenizer, bad)


def test_tokenizer_checks(tokenizer):
    check_rl_tokenizer(tokenizer)
    assert tokenizer.padding_side == "left"
    shared = copy.deepcopy(tokenizer)
    shared.pad_token = shared.eos_token
    with pytest.raises(PromptTokenizationError, match="must differ from the eos token"):
        check_rl_tokenizer(shared)
    check_rl_tokenizer(shared, require_distinct_pad=False)  # GRPO / RLOO accept it
    no_template = copy.deepcopy(tokenizer)
    no_template.chat_template = None
    with pytest.raises(PromptTokenizationError, match="chat template"):
        check_rl_tokenizer(no_template)


def test_stop_ids_prefer_the_generation_config(tokenizer):
    from transformers import GenerationConfig

    assert stop_token_ids(tokenizer) == [tokenizer.eos_token_id]
    assert stop_token_ids(tokenizer, GenerationConfig(eos_token_id=[5, 7])) == [5, 7]
