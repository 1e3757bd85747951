"""The perturbation-specific term of the group fidelity reward and its reference."""

import numpy as np
import pytest

from cellrlhf.metrics.fidelity import pearson_rows
from cellrlhf.reward.fidelity_reward import GroupFidelityReward, RewardWeights
from cellrlhf.reward.specific_reference import context_mean_deltas, with_specific_term

N_GENES = 12
ONLY_SPECIFIC = RewardWeights(fidelity=0.0, specific=1.0, distribution=0.0)


def cell(*genes):
    return "<cell> " + " ".join(genes) + " </cell>"


def rows(n, *, perturbed, control, decoded_control, context="K562"):
    return {
        "reference_perturbed": [list(perturbed)] * n,
        "reference_control": [list(control)] * n,
        "decoded_control": [list(decoded_control)] * n,
        "cell_context": [context] * n,
    }


def test_a_group_that_writes_the_mean_response_scores_zero(line_decoder):
    # one-gene cells decode to 3 on that gene (rank 0): the group's pseudo-bulk is
    # [1.5, 1.5, 0, ...]; with decoded control 1 and m = [0.5, 0.5, -1, ...] it is exactly
    # control + m: nothing specific
    m = np.r_[0.5, 0.5, np.full(N_GENES - 2, -1.0)]
    ones = np.ones(N_GENES)
    perturbed = ones + np.linspace(-1, 1, N_GENES)  # varies around the mean response
    cols = rows(2, perturbed=perturbed, control=ones, decoded_control=ones)
    reward = GroupFidelityReward(
        line_decoder, weights=ONLY_SPECIFIC, credit="group", train_mean_deltas={"K562": m}
    )
    out = reward(["p", "p"], [cell("GENE0"), cell("GENE1")], **cols)
    assert out == [0.0, 0.0]
    assert reward.last_breakdown.metrics["pearson_specific_group"] == 0.0
    # leave-one-out credit: each alone is the other's mirror image, pseudo-values cancel
    jack = GroupFidelityReward(line_decoder, weights=ONLY_SPECIFIC, train_mean_deltas={"K562": m})
    got = jack(["p", "p"], [cell("GENE0"), cell("GENE1")], **cols)
    assert got[0] == pytest.approx(-got[1]) and got[0] != 0.0
    # the plain fidelity term of the same group is not 0: it rewards the average response
    plain = GroupFidelityReward(
        line_decoder, weights=RewardWeights(distribution=0.0), credit="group"
    )
    assert plain(["p", "p"], [cell("GENE0"), cell("GENE1")], **cols)[0] != 0.0


def test_exact_value_is_the_jackknife_pseudo_value_of_the_specific_change(line_decoder):
    completions = [cell("GENE0", "GENE1", "GENE5"), cell("GENE3", "GENE0", "GENE7", "GENE2")]
    rng = np.random.default_rng(0)
    control = rng.uniform(0.5, 1.5, N_GENES)
    perturbed = control + rng.normal(0, 1, N_GENES)
    dc = rng.uniform(0.2, 1.0, N_GENES)
    m = rng.normal(0, 0.5, N_GENES)
    m[0] = -3.0  # clips: max(control + m, 0) = 0 on gene 0, both sides
    cols = rows(2, perturbed=perturbed, control=control, decoded_control=dc)
    reward = GroupFidelityReward(line_decoder, weights=ONLY_SPECIFIC, train_mean_deltas={"K562": m})
    got = reward(["p", "p"], completions, **cols)

    X = line_decoder.decode(completions)[0].toarray().astype(np.float64)
    pred_ref, truth = np.maximum(dc + m, 0), perturbed - np.maximum(control + m, 0)
    F = pearson_rows(X.mean(0) - pred_ref, truth)
    loo = [pearson_rows(X[1] - pred_ref, truth), pearson_rows(X[0] - pred_ref, truth)]
    np.testing.assert_allclose(got, [2 * F - loo[0], 2 * F - loo[1]], rtol=1e-10)
    b = reward.last_breakdown
    np.testing.assert_allclose(b.specific, got)
    assert b.metrics["pearson_specific_group"] == pytest.approx(F)


def test_each_prompt_uses_its_own_contexts_mean(line_decoder):
    completions = [cell("GENE0", "GENE4"), cell("GENE4", "GENE9")]
    control = np.ones(N_GENES)
    perturbed = control + np.arange(N_GENES) % 3
    means = {"A": np.zeros(N_GENES), "B": np.linspace(0, 1, N_GENES)}
    a, b = (
        rows(1, perturbed=perturbed, control=control, decoded_control=control, context=ctx)
        for ctx in "AB"
    )
    cols = {key: a[key] + b[key] for key in a}
    reward = GroupFidelityReward(
        line_decoder, weights=ONLY_SPECIFIC, credit="group", train_mean_deltas=means
    )
    got = reward(["a", "b"], completions, **cols)
    X = line_decoder.decode(completions)[0].toarray()
    for i, ctx in enumerate("AB"):
        ref = np.maximum(control + means[ctx], 0)
        assert got[i] == pytest.approx(pearson_rows(X[i] - ref, perturbed - ref))
    # with m = 0 (context A) the specific term is the plain fidelity
    plain = GroupFidelityReward(
        line_decoder, weights=RewardWeights(distribution=0.0), credit="group"
    )
    assert got[0] == pytest.approx(
        plain(["a"], completions[:1], **{k: v[:1] for k, v in cols.items()})[0]
    )


def test_weight_zero_leaves_the_reward_unchanged_but_logs_the_term(line_decoder):
    completions = [cell("GENE0", "GENE1"), cell("GENE2", "GENE0")]
    ones = np.ones(N_GENES)
    cols = rows(2, perturbed=ones + np.arange(N_GENES) / 10, control=ones, decoded_control=ones)
    weights = RewardWeights(distribution=0.0)
    base = GroupFidelityReward(line_decoder, weights=weights)(["p", "p"], completions, **cols)
    logged = GroupFidelityReward(
        line_decoder, weights=weights, train_mean_deltas={"K562": np.full(N_GENES, 0.1)}
    )
    assert logged(["p", "p"], completions, **cols) == base
    assert np.isfinite(logged.last_breakdown.metrics["pearson_specific_group"])


def test_clear_errors(line_decoder):
    ones = np.ones(N_GENES)
    cols = rows(1, perturbed=ones + np.arange(N_GENES), control=ones, decoded_control=ones)
    with pytest.raises(ValueError, match="needs train_mean_deltas"):
        GroupFidelityReward(line_decoder, weights=ONLY_SPECIFIC)
    with pytest.raises(ValueError, match="must be 12 finite numbers"):
        GroupFidelityReward(line_decoder, weights=ONLY_SPECIFIC, train_mean_deltas={"K562": [1.0]})
    reward = GroupFidelityReward(
        line_decoder, weights=ONLY_SPECIFIC, train_mean_deltas={"HepG2": np.zeros(N_GENES)}
    )
    with pytest.raises(
        ValueError, match=r"no mean training change for cell context\(s\) \['K562'\]"
    ):
        reward(["p"], [cell("GENE0")], **cols)
    del cols["cell_context"]
    with pytest.raises(KeyError, match="cell_context"):
        reward(["p"], [cell("GENE0")], **cols)


TRAIN_ROWS = {  # two prompts of (K562, A): counted once
    "perturbation": ["A", "A", "B", "A"],
    "cell_context": ["K562", "K562", "K562", "RPE1"],
    "reference_perturbed": [[2.0, 1.0], [2.0, 1.0], [1.0, 4.0], [0.0, 0.0]],
    "reference_control": [[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 2.0]],
}


def test_context_mean_deltas_weigh_each_perturbation_once():
    got = context_mean_deltas(TRAIN_ROWS)
    np.testing.assert_allclose(got["K562"], [0.5, 1.5])  # mean of [1, 0] and [0, 3]
    np.testing.assert_allclose(got["RPE1"], [-1.0, -2.0])
    from datasets import Dataset

    from_dataset = context_mean_deltas(Dataset.from_dict(TRAIN_ROWS))
    np.testing.assert_allclose(from_dataset["K562"], got["K562"])
    with pytest.raises(KeyError, match="no 'cell_context' column"):
        context_mean_deltas({k: v for k, v in TRAIN_ROWS.items() if k != "cell_context"})


def test_with_specific_term_merges_the_weight_and_the_reference():
    assert with_specific_term({"top_k": 10}, 0.0, None) == {"top_k": 10}
    kwargs = with_specific_term({"weights": {"top_de": 0.5}}, 0.3, TRAIN_ROWS)
    assert kwargs["weights"] == {"top_de": 0.5, "specific": 0.3}
    assert set(kwargs["train_mean_deltas"]) == {"K562", "RPE1"}
    kwargs = with_specific_term({"weights": RewardWeights(top_de=0.5)}, 0.3, TRAIN_ROWS)
    assert kwargs["weights"]["specific"] == 0.3 and kwargs["weights"]["top_de"] == 0.5
    with pytest.raises(ValueError, match="needs the training rows"):
        with_specific_term(None, 0.3, None)


def test_the_rl_stage_builds_the_term_from_its_training_rows(line_decoder):
    from types import SimpleNamespace

    from cellrlhf.ppo.reward_functions import build_reward_functions

    train = {
        "perturbation": ["A", "B"],
        "cell_context": ["K562", "K562"],
        "reference_perturbed": [list(np.arange(N_GENES) + 1.0), list(np.ones(N_GENES) * 3)],
        "reference_control": [list(np.ones(N_GENES))] * 2,
    }
    funcs, _ = build_reward_functions(
        ["fidelity"],
        decoder=line_decoder,
        tokenizer=SimpleNamespace(eos_token_id=2),
        reward_model_path=None,
        specific_weight=0.5,
        train_rows=train,
    )
    assert funcs[0].weights.specific == 0.5
    np.testing.assert_allclose(funcs[0].train_mean_deltas["K562"], (np.arange(N_GENES) + 2) / 2)
    off, _ = build_reward_functions(
        ["fidelity"],
        decoder=line_decoder,
        tokenizer=SimpleNamespace(eos_token_id=2),
        reward_model_path=None,
    )
    assert off[0].weights.specific == 0.0 and off[0].train_mean_deltas is None
