import numpy as np
import pytest
from tiny_rl_data import HELDOUT

from cellrlhf.cell2text.markup import format_cell
from cellrlhf.metrics.fidelity import pearson_delta
from cellrlhf.ppo.heldout_evaluation import heldout_prompts_from_dataset, score_heldout_samples


@pytest.fixture(scope="module")
def heldout(rl_dataset_dir):
    from datasets import load_from_disk

    return heldout_prompts_from_dataset(load_from_disk(str(rl_dataset_dir / "rl"))["test"])


def test_prompts_carry_their_reference_data(heldout):
    assert [p.perturbation for p in heldout] == list(HELDOUT)
    assert heldout[0].prompt[-1]["role"] == "user"
    assert heldout[0].reference_perturbed.shape == heldout[0].decoded_control.shape
    assert len(heldout[0].reference_sentences) == 12


def test_real_cells_score_the_pseudobulk_pearson_delta(heldout, decoder):
    answers = [[format_cell(s) for s in p.reference_sentences] for p in heldout]
    scores = score_heldout_samples(heldout, answers, decoder=decoder, top_k_de=5)
    expected = []
    for p, group in zip(heldout, answers, strict=True):
        X, _ = decoder.decode(group)
        pred = np.asarray(X.mean(axis=0)).ravel()
        expected.append(
            pearson_delta(pred, p.decoded_control, p.reference_perturbed, p.reference_control)
        )
    m = scores.metrics
    # the references are the decoded real cells: their own pseudo-bulk is the truth
    assert m["heldout/pearson_delta"] == pytest.approx(np.mean(expected))
    assert m["heldout/pearson_delta"] == pytest.approx(1.0)
    assert m["heldout/pearson_delta_top5"] == pytest.approx(1.0)
    assert m["heldout/valid_fraction"] == pytest.approx(1.0)
    assert m["heldout/unclosed_fraction"] == 0.0
    assert m["heldout/energy_to_real"] == pytest.approx(0.0, abs=1e-3)  # same cells
    assert m["heldout/n_prompts"] == 2 and m["heldout/samples_per_prompt"] == 12
    assert set(scores.per_prompt) == {f"{p}|K562" for p in HELDOUT}
    assert "heldout/learned_reward" not in m and "heldout/no_end_fraction" not in m


def test_collapse_shows_in_diversity_and_distance(heldout, decoder):
    G = 8
    varied = [[format_cell(s) for s in p.reference_sentences[:G]] for p in heldout]
    collapsed = [[format_cell(p.reference_sentences[0])] * G for p in heldout]
    a = score_heldout_samples(heldout, varied, decoder=decoder).metrics
    b = score_heldout_samples(heldout, collapsed, decoder=decoder).metrics
    assert b["heldout/distinct_fraction"] == pytest.approx(1 / G)
    assert a["heldout/distinct_fraction"] > b["heldout/distinct_fraction"]
    assert b["heldout/energy_to_real"] > a["heldout/energy_to_real"]


def test_penalised_answers_and_side_measures(heldout, decoder):
    answers = [["<cell> JUN JUN JUN", "<cell> EGR1 JUN </cell>"], ["NOTAGENE </cell>", ""]]
    scores = score_heldout_samples(
        heldout,
        answers,
        decoder=decoder,
        finished=[[False, True], [True, True]],
        learned_rewards=[[1.0, 2.0], [3.0, 4.0]],
    )
    m = scores.metrics
    assert m["heldout/no_end_fraction"] == 0.25
    assert m["heldout/learned_reward"] == 2.5
    assert m["heldout/duplicate_fraction"] > 0 and m["heldout/unknown_fraction"] > 0
    assert m["heldout/empty_fraction"] > 0


def test_bad_inputs_are_refused(heldout, decoder, rl_dataset_dir):
    from datasets import load_from_disk

    with pytest.raises(ValueError, match="answer groups"):
        score_heldout_samples(heldout, [["<cell> JUN </cell>"]], decoder=decoder)
    with pytest.raises(ValueError, match="at least one"):
        score_heldout_samples(heldout, [["<cell> JUN </cell>"], []], decoder=decoder)
    test = load_from_disk(str(rl_dataset_dir / "rl"))["test"].remove_columns("decoded_control")
    with pytest.raises(ValueError, match="decoded_control"):
        heldout_prompts_from_dataset(test)


def test_subsample_is_seeded(rl_dataset_dir):
    from datasets import load_from_disk

    test = load_from_disk(str(rl_dataset_dir / "rl"))["test"]
    a = heldout_prompts_from_dataset(test, max_prompts=1, seed=3)
    b = heldout_prompts_from_dataset(test, max_prompts=1, seed=3)
    assert len(a) == 1 and a[0].perturbation == b[0].perturbation


def test_pearson_specific_against_the_context_mean_training_change(rl_dataset_dir, decoder):
    from datasets import load_from_disk

    from cellrlhf.metrics.fidelity import pearson_specific
    from cellrlhf.reward.specific_reference import context_mean_deltas

    rl = load_from_disk(str(rl_dataset_dir / "rl"))
    means = context_mean_deltas(rl["train"])
    prompts = heldout_prompts_from_dataset(rl["test"], train_mean_deltas=means)
    assert all(np.array_equal(p.reference_delta, means["K562"]) for p in prompts)
    # half of each prompt's real cells: a pseudo-bulk near, not equal to, the truth
    answers = [[format_cell(s) for s in p.reference_sentences[::2]] for p in prompts]
    scores = score_heldout_samples(prompts, answers, decoder=decoder)
    expected = []
    for p, group in zip(prompts, answers, strict=True):
        X, _ = decoder.decode(group)
        pred = np.asarray(X.mean(axis=0)).ravel()
        expected.append(
            pearson_specific(
                pred, p.decoded_control, p.reference_perturbed, p.reference_control, means["K562"]
            )
        )
    assert scores.metrics["heldout/pearson_specific"] == pytest.approx(np.nanmean(expected))
    assert [v["pearson_specific"] for v in scores.per_prompt.values()] == pytest.approx(expected)


def test_pearson_specific_is_absent_without_a_reference(heldout, decoder):
    answers = [[format_cell(s) for s in p.reference_sentences] for p in heldout]
    scores = score_heldout_samples(heldout, answers, decoder=decoder)
    assert "heldout/pearson_specific" not in scores.metrics
    other = heldout_prompts_from_dataset(
        _rl_test(heldout), train_mean_deltas={"HeLa": np.zeros_like(heldout[0].decoded_control)}
    )
    assert all(p.reference_delta is None for p in other)


def _rl_test(heldout):
    from datasets import Dataset

    return Dataset.from_dict(
        {
            "prompt": [list(p.prompt) for p in heldout],
            "perturbation": [p.perturbation for p in heldout],
            "cell_context": [p.cell_context for p in heldout],
            "reference_perturbed": [p.reference_perturbed for p in heldout],
            "reference_control": [p.reference_control for p in heldout],
            "decoded_control": [p.decoded_control for p in heldout],
        }
    )
