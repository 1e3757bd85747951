import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cellrlhf.data.balance import BalanceConfig, balanced_sample


def _obs(sizes: dict[str, int]) -> pd.DataFrame:
    labels = [k for k, n in sizes.items() for _ in range(n)]
    return pd.DataFrame({"tissue": labels, "tech": ["10x"] * len(labels)})


def _counts(obs, rows, column="tissue"):
    return obs.iloc[rows][column].value_counts().to_dict()


def test_downsample_to_smallest_group():
    obs = _obs({"lung": 100, "liver": 10, "skin": 30})
    rows = balanced_sample(obs, BalanceConfig(by=("tissue",), strategy="downsample"), seed=0)
    assert _counts(obs, rows) == {"lung": 10, "liver": 10, "skin": 10}
    assert len(set(rows.tolist())) == len(rows)


def test_upsample_keeps_every_cell_and_repeats_small_groups():
    obs = _obs({"lung": 50, "liver": 5})
    rows = balanced_sample(obs, BalanceConfig(by=("tissue",), strategy="upsample"), seed=0)
    assert _counts(obs, rows) == {"lung": 50, "liver": 50}
    assert set(range(55)) <= set(rows.tolist())  # nobody dropped


def test_temperature_interpolates_between_natural_and_uniform():
    obs = _obs({"a": 900, "b": 100})
    natural = balanced_sample(
        obs, BalanceConfig(by=("tissue",), strategy="temperature", temperature=1.0)
    )
    uniform = balanced_sample(
        obs, BalanceConfig(by=("tissue",), strategy="temperature", temperature=0.0)
    )
    half = balanced_sample(
        obs, BalanceConfig(by=("tissue",), strategy="temperature", temperature=0.5)
    )
    assert _counts(obs, natural) == {"a": 900, "b": 100}
    assert _counts(obs, uniform) == {"a": 500, "b": 500}
    assert _counts(obs, half) == {"a": 750, "b": 250}  # sqrt(9) : sqrt(1)


def test_candidates_and_multiple_columns_and_errors():
    obs = _obs({"lung": 20, "liver": 20})
    obs["tech"] = ["10x", "smartseq"] * 20
    candidates = np.arange(0, 40, 2)  # only 10x cells
    rows = balanced_sample(
        obs,
        BalanceConfig(by=("tissue", "tech"), strategy="downsample"),
        candidates=candidates,
        seed=1,
    )
    assert set(rows.tolist()) <= set(candidates.tolist())
    with pytest.raises(KeyError, match="not in the cell metadata"):
        balanced_sample(obs, BalanceConfig(by=("organ",), strategy="downsample"))
    with pytest.raises(ValueError, match="needs balance.by"):
        BalanceConfig(strategy="upsample")
    with pytest.raises(ValueError, match="unknown key"):
        BalanceConfig.from_dict({"by": "tissue", "mode": "up"})


@settings(max_examples=30, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 30), min_size=1, max_size=5),
    strategy=st.sampled_from(["none", "downsample", "upsample", "temperature"]),
    seed=st.integers(0, 1000),
)
def test_properties(sizes, strategy, seed):
    obs = _obs({f"g{i}": n for i, n in enumerate(sizes)})
    config = BalanceConfig(by=("tissue",) if strategy != "none" else (), strategy=strategy)
    rows = balanced_sample(obs, config, seed=seed)
    assert np.all(np.diff(rows) >= 0) and rows.min() >= 0 and rows.max() < len(obs)
    np.testing.assert_array_equal(rows, balanced_sample(obs, config, seed=seed))  # determinism
    if strategy in ("downsample", "upsample"):
        assert len(set(_counts(obs, rows).values())) == 1
