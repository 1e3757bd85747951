import numpy as np
import pytest
import torch
from tiny_rl_data import prompt

from cellrlhf.ppo.heldout_generation import answer_logprobs, sample_answers
from cellrlhf.ppo.prompt_tokenization import prompt_token_ids
from cellrlhf.ppo.reward_model_scoring import score_answer_ids


@pytest.fixture(scope="module")
def policy(sft_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(sft_model_dir)).eval()


@pytest.fixture(scope="module")
def prompts(sft_tokenizer):
    ids = [prompt_token_ids(sft_tokenizer, prompt(p)) for p in ("FOS", "KLF1 and GATA1")]
    assert len(ids[0]) < len(ids[1])  # batches mix lengths: left padding is exercised
    return ids


def sample(policy, tokenizer, prompts, seed, n=6):
    return sample_answers(
        policy,
        tokenizer,
        prompts,
        [0] * n + [1] * n,
        max_new_tokens=12,
        temperature=1.0,
        stop_ids=[tokenizer.eos_token_id],
        batch_size=5,
        seed=seed,
    )


def test_sampling_is_seeded_and_leaves_the_global_rng_alone(policy, sft_tokenizer, prompts):
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = sample(policy, sft_tokenizer, prompts, seed=1)
    assert torch.equal(torch.rand(3), expected_next)
    b = sample(policy, sft_tokenizer, prompts, seed=1)
    c = sample(policy, sft_tokenizer, prompts, seed=2)
    assert a.completion_ids == b.completion_ids
    assert a.completion_ids != c.completion_ids
    assert a.items.tolist() == [0] * 6 + [1] * 6
    eos = sft_tokenizer.eos_token_id
    for ids, done, text in zip(a.completion_ids, a.finished, a.texts, strict=True):
        assert done == (eos in ids)
        if done:
            assert ids[-1] == eos and ids.count(eos) == 1
        else:
            assert len(ids) == 12
        assert sft_tokenizer.eos_token not in text and sft_tokenizer.pad_token not in text


def test_logprobs_match_a_direct_forward_and_ignore_padding(policy, sft_tokenizer, prompts):
    answers = sample(policy, sft_tokenizer, prompts, seed=3, n=3)
    total, lengths = answer_logprobs(
        policy,
        prompts,
        answers.items,
        answers.completion_ids,
        pad_token_id=sft_tokenizer.pad_token_id,
        temperature=0.7,
        batch_size=4,
        device="cpu",
    )
    for k in (0, 4):
        p, c = prompts[answers.items[k]], answers.completion_ids[k]
        with torch.no_grad():
            logits = policy(torch.tensor([p + c])).logits[0, len(p) - 1 : -1] / 0.7
        direct = torch.log_softmax(logits, -1).gather(-1, torch.tensor(c)[:, None]).sum().item()
        assert total[k] == pytest.approx(direct, abs=1e-4)
        assert lengths[k] == len(c)


def test_reward_scores_are_read_at_the_last_real_token(reward_model_dir, sft_tokenizer, prompts):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(reward_model_dir)).eval()
    completions = [[5, 6, sft_tokenizer.eos_token_id], [7]]
    scores = score_answer_ids(
        model,
        prompts,
        [0, 1],
        completions,
        pad_token_id=sft_tokenizer.pad_token_id,
        batch_size=2,
        device="cpu",
    )
    for k, (i, c) in enumerate(zip([0, 1], completions, strict=True)):
        with torch.no_grad():
            alone = model(torch.tensor([prompts[i] + c])).logits[0, 0].item()
        assert scores[k] == pytest.approx(alone, abs=1e-5)
    assert np.isfinite(scores).all()
    model.config.pad_token_id = sft_tokenizer.pad_token_id + 1
    with pytest.raises(ValueError, match="pad_token_id"):
        score_answer_ids(
            model,
            prompts,
            [0],
            [[5]],
            pad_token_id=sft_tokenizer.pad_token_id,
            batch_size=1,
            device="cpu",
        )
