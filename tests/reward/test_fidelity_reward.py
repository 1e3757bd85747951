import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cellrlhf.metrics.fidelity import pearson_rows
from cellrlhf.reward.distribution import ReferenceCells, energy_coefficient, mmd_rbf
from cellrlhf.reward.fidelity_reward import (
    GroupFidelityReward,
    RewardWeights,
    completion_text,
    group_by_prompt,
)

GENES = [f"GENE{i}" for i in range(12)]
NO_DISTRIBUTION = RewardWeights(distribution=0.0)


def cell(*genes, closed=True):
    return "<cell> " + " ".join(genes) + (" </cell>" if closed else "")


def columns(decoder, truth_up, n, *, reference_sentences=None):
    """Reference columns for n rows of one prompt: control flat, perturbed up on truth_up."""
    control = np.full(len(GENES), 1.0)
    perturbed = control.copy()
    for rank, g in enumerate(truth_up):
        perturbed[GENES.index(g)] += 2.0 - 0.3 * rank
    decoded_ctrl = decoder.decode([cell(*GENES)])[0].toarray()[0]
    out = {
        "reference_perturbed": [list(perturbed)] * n,
        "reference_control": [list(control)] * n,
        "decoded_control": [list(decoded_ctrl)] * n,
    }
    if reference_sentences is not None:
        out["reference_sentences"] = [reference_sentences] * n
    return out


def test_completion_text_forms():
    assert completion_text("x") == "x"
    assert completion_text([{"role": "assistant", "content": "a b"}]) == "a b"
    assert (
        completion_text([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])
        == "a"
    )
    assert completion_text({"content": "c"}) == "c"
    assert completion_text(None) == "" and completion_text(3) == ""


def test_group_by_prompt_any_order_and_conversational():
    conv = [{"role": "user", "content": "KLF1?"}]
    codes, first = group_by_prompt(["b", conv, "a", "b", [dict(conv[0])], "a"])
    assert codes.tolist() == [0, 1, 2, 0, 1, 2]
    assert first.tolist() == [0, 1, 2]


def test_exact_value_is_the_jackknife_pseudo_value(line_decoder):
    completions = [cell("GENE0", "GENE1", "GENE5"), cell("GENE3", "GENE0", "GENE7", "GENE2")]
    cols = columns(line_decoder, ["GENE0", "GENE1", "GENE2"], 2)
    reward = GroupFidelityReward(line_decoder, weights=NO_DISTRIBUTION)
    got = reward(["p", "p"], completions, **cols)

    X = line_decoder.decode(completions)[0].toarray().astype(np.float64)
    dc = np.asarray(cols["decoded_control"][0])
    truth = np.asarray(cols["reference_perturbed"][0]) - np.asarray(cols["reference_control"][0])
    F = pearson_rows(X.mean(0) - dc, truth)
    loo = [pearson_rows(X[1] - dc, truth), pearson_rows(X[0] - dc, truth)]
    want = [2 * F - loo[0], 2 * F - loo[1]]
    np.testing.assert_allclose(got, want, rtol=1e-10)
    b = reward.last_breakdown
    np.testing.assert_allclose(b.group_fidelity, [F, F])
    assert b.metrics["pearson_delta_group"] == pytest.approx(F)


def test_faithful_groups_beat_random_groups(line_decoder):
    rng = np.random.default_rng(0)
    up = ["GENE4", "GENE9", "GENE1"]
    good = [cell(*up, *rng.permutation([g for g in GENES if g not in up])[:5]) for _ in range(8)]
    bad = [cell(*rng.permutation(GENES)[:8]) for _ in range(8)]
    cols = columns(line_decoder, up, 16)
    reward = GroupFidelityReward(line_decoder, weights=NO_DISTRIBUTION)
    out = np.asarray(reward(["good"] * 8 + ["bad"] * 8, good + bad, **cols))
    b = reward.last_breakdown
    assert b.group_fidelity[0] > 0.5 > b.group_fidelity[-1]
    assert out[:8].mean() > out[8:].mean() + 0.3
    # group mean of the pseudo-values is the jackknife estimate, close to the group value
    assert out[:8].mean() == pytest.approx(b.group_fidelity[0], abs=0.25)


def test_leave_one_out_credit_ranks_the_helpful_completion_first(line_decoder):
    up = ["GENE4", "GENE9", "GENE1"]
    completions = [cell("GENE0", "GENE2", "GENE3"), cell(*up), cell("GENE7", "GENE2", "GENE0")]
    reward = GroupFidelityReward(line_decoder, weights=NO_DISTRIBUTION)
    out = reward(["p"] * 3, completions, **columns(line_decoder, up, 3))
    assert int(np.argmax(out)) == 1
    flat = GroupFidelityReward(line_decoder, weights=NO_DISTRIBUTION, credit="group")
    assert len(set(flat(["p"] * 3, completions, **columns(line_decoder, up, 3)))) == 1


def test_penalties_exact(line_decoder):
    base = cell("GENE0", "GENE1", "GENE2")
    completions = [
        base,
        cell("GENE0", "GENE1", "GENE2", "GENE1"),  # 1 of 4 words repeats
        cell("GENE0", "GENE1", "GENE2", closed=False),  # never closed
        cell("GENE0", "GENE1", "GENE2", "NOTAGENE"),  # 1 of 4 words unknown
        cell(),  # empty
        "complete garbage !!",  # unmarked, nothing decodable: 3 unknown words
    ]
    reward = GroupFidelityReward(line_decoder, weights=NO_DISTRIBUTION, credit="group")
    out = np.asarray(reward(["p"] * 6, completions, **columns(line_decoder, ["GENE0"], 6)))
    F = reward.last_breakdown.group_fidelity[0]
    np.testing.assert_allclose(out - F, [0.0, -0.25, -0.5, -0.25, -1.0, -2.0], atol=1e-12)


def test_end_tokens_from_completion_ids(line_decoder):
    # TRL strips special tokens: the text has no markers, the ids tell whether the cell ended
    completions = ["GENE0 GENE1", "GENE0 GENE1"]
    ids = [[5, 6, 99], [5, 6, 7]]
    reward = GroupFidelityReward(
        line_decoder, weights=NO_DISTRIBUTION, credit="group", end_token_ids=[99]
    )
    out = reward(["p", "p"], completions, completion_ids=ids, **columns(line_decoder, ["GENE0"], 2))
    assert out[0] - out[1] == pytest.approx(0.5)


def test_order_and_format_do_not_matter(line_decoder):
    rng = np.random.default_rng(3)
    prompts = [f"p{i % 3}" for i in range(12)]
    completions = [cell(*rng.permutation(GENES)[:6]) for _ in range(12)]
    cols = columns(line_decoder, ["GENE2", "GENE5"], 12, reference_sentences=[cell(*GENES[:5])])
    reward = GroupFidelityReward(line_decoder)
    out = np.asarray(reward(prompts, completions, **cols))
    perm = rng.permutation(12)
    shuffled = reward(
        [[{"role": "user", "content": prompts[i]}] for i in perm],
        [[{"role": "assistant", "content": completions[i]}] for i in perm],
        **{k: [v[i] for i in perm] for k, v in cols.items()},
    )
    np.testing.assert_allclose(shuffled, out[perm], rtol=1e-12)


def test_distribution_term_penalises_a_collapsed_group(line_decoder):
    rng = np.random.default_rng(4)
    real = [cell(*rng.permutation(GENES)[:6]) for _ in range(32)]
    varied = [cell(*rng.permutation(GENES)[:6]) for _ in range(8)]
    collapsed = [varied[0]] * 8
    cols = columns(line_decoder, ["GENE0"], 16, reference_sentences=real)
    reward = GroupFidelityReward(
        line_decoder, weights=RewardWeights(fidelity=0.0, distribution=1.0)
    )
    out = np.asarray(reward(["v"] * 8 + ["c"] * 8, varied + collapsed, **cols))
    b = reward.last_breakdown
    assert b.group_distribution[0] < b.group_distribution[-1]
    assert out[:8].mean() > out[8:].mean()
    assert b.metrics["distinct_fraction"] == pytest.approx((1 + 1 / 8) / 2)
    assert "energy_to_real" in b.metrics


@pytest.mark.parametrize("distance", ["energy", "mmd"])
def test_distribution_term_is_the_jackknife_of_the_group_distance(line_decoder, distance):
    rng = np.random.default_rng(6)
    real = [cell(*rng.permutation(GENES)[:6]) for _ in range(20)]
    groups = [[cell(*rng.permutation(GENES)[:5]) for _ in range(size)] for size in (4, 3, 1)]
    completions = [c for g in groups for c in g]
    prompts = [f"p{k}" for k, g in enumerate(groups) for _ in g]
    cols = columns(line_decoder, ["GENE0"], len(completions), reference_sentences=real)
    weights = RewardWeights(fidelity=0.0, distribution=1.0)
    reward = GroupFidelityReward(line_decoder, weights=weights, distance=distance, pseudo_clip=50)
    out = np.asarray(reward(prompts, completions, **cols))

    Y = line_decoder.decode(real)[0].toarray().astype(np.float64)
    ref = ReferenceCells.from_matrix(Y)
    want = []
    for g in groups:
        Xg = line_decoder.decode(g)[0].toarray().astype(np.float64)

        def dist(block):
            if distance == "energy":
                return energy_coefficient(block, Y)
            return mmd_rbf(block, Y, gamma=ref.gamma)

        value = dist(Xg)
        size = len(g)
        for i in range(size):
            loo = dist(np.delete(Xg, i, axis=0)) if size > 1 else value
            want.append(-(size * value - (size - 1) * loo))
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-7)  # float32 products


def test_trl_hooks_name_and_logging(line_decoder):
    logged, extra = {}, {}
    reward = GroupFidelityReward(line_decoder, name="fid")
    assert reward.__name__ == "fid"
    out = reward(
        ["p", "p"],
        [cell("GENE0"), cell("GENE1")],
        completion_ids=[[1], [2]],
        trainer_state=object(),
        log_extra=lambda k, v: extra.__setitem__(k, v),
        log_metric=lambda k, v: logged.__setitem__(k, v),
        perturbation=["KLF1", "KLF1"],
        **columns(line_decoder, ["GENE0"], 2),
    )
    assert len(out) == 2 and all(isinstance(v, float) for v in out)
    assert {
        "fid/pearson_delta_group",
        "fid/distinct_fraction",
        "fid/token_entropy",
        "fid/duplicate_fraction",
        "fid/valid_fraction",
    } <= set(logged)
    assert list(extra) == ["fid/group_pearson_delta"]
    assert len(extra["fid/group_pearson_delta"]) == 2


def test_bad_columns_are_clear_errors(line_decoder):
    reward = GroupFidelityReward(line_decoder)
    cols = columns(line_decoder, ["GENE0"], 1)
    with pytest.raises(KeyError, match="decoded_control"):
        reward(["p"], [cell("GENE0")], **{k: v for k, v in cols.items() if k != "decoded_control"})
    with pytest.raises(ValueError, match="12 genes"):
        reward(["p"], [cell("GENE0")], **{**cols, "reference_perturbed": [[1.0, 2.0]]})
    with pytest.raises(ValueError, match="NaN"):
        reward(["p"], [cell("GENE0")], **{**cols, "reference_control": [[np.nan] * 12]})
    with pytest.raises(ValueError, match="prompts"):
        reward(["p", "q"], [cell("GENE0")], **cols)
    with pytest.raises(ValueError, match="weight"):
        RewardWeights(duplicates=-1.0)
    with pytest.raises(TypeError, match="ExpressionDecoder"):
        GroupFidelityReward(object())


def test_empty_batch(line_decoder):
    assert GroupFidelityReward(line_decoder)([], [], **columns(line_decoder, ["GENE0"], 0)) == []


_words = st.sampled_from(GENES + ["gene3", "<cell>", "</cell>", "<pert>", "xyz", "", "\n", "é"])
_completion = st.one_of(
    st.text(max_size=60),
    st.lists(_words, max_size=40).map(" ".join),
    st.lists(_words, max_size=10).map(lambda w: cell(*w, closed=False)),
    st.sampled_from(GENES).map(lambda g: cell(*[g] * 300)),  # repeated up to the cap
    st.just(cell(*(GENES * 50))),  # overlong
    st.none(),
    st.lists(
        st.fixed_dictionaries({"role": st.just("assistant"), "content": st.text(max_size=30)}),
        max_size=2,
    ),
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    completions=st.lists(_completion, min_size=1, max_size=12),
    n_prompts=st.integers(1, 4),
    credit=st.sampled_from(["jackknife", "group"]),
    distance=st.sampled_from(["energy", "mmd"]),
)
def test_every_completion_gets_a_finite_reward(
    line_decoder, completions, n_prompts, credit, distance
):
    n = len(completions)
    prompts = [f"p{i % n_prompts}" for i in range(n)]
    cols = columns(
        line_decoder, ["GENE1", "GENE2"], n, reference_sentences=[cell(*GENES[:4]), "", "GENE1"]
    )
    reward = GroupFidelityReward(
        line_decoder, credit=credit, distance=distance, weights=RewardWeights(top_de=0.5)
    )
    out = reward(prompts, completions, **cols)
    assert len(out) == n
    assert all(isinstance(v, float) and np.isfinite(v) for v in out)
    # bounded: pseudo-values are clipped, penalties are at most 1 + 0.5 + 1 + 1
    assert all(-3 * 1.5 - 0.25 * 3 - 3.5 - 1e-9 <= v <= 3 * 1.5 + 1e-9 for v in out)
