"""Known third-party noise is silenced; everything else, and debug mode, still shows."""

import logging
import warnings

import pytest

from cellrlhf.third_party_noise import KNOWN_LOG_MESSAGES, quiet_known_noise


@pytest.fixture
def clean_filters():
    saved = warnings.filters[:]
    loggers = {name: logging.getLogger(name) for name in KNOWN_LOG_MESSAGES}
    saved_filters = {name: lg.filters[:] for name, lg in loggers.items()}
    yield
    warnings.filters[:] = saved
    for name, lg in loggers.items():
        lg.filters[:] = saved_filters[name]


def test_known_warnings_and_log_lines_are_dropped_others_kept(clean_filters, monkeypatch, caplog):
    monkeypatch.delenv("CELLRLHF_DEBUG", raising=False)
    quiet_known_noise()
    quiet_known_noise()  # idempotent
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        quiet_known_noise()
        warnings.warn(
            "'pin_memory' argument is set as true but no accelerator is found",
            UserWarning,
            stacklevel=2,
        )
        warnings.warn(
            "`gradient_checkpointing` is deprecated and will be removed in v6.",
            FutureWarning,
            stacklevel=2,
        )
        warnings.warn("pin_memory is fine but this one is not known", UserWarning, stacklevel=2)
    assert [str(w.message) for w in seen] == ["pin_memory is fine but this one is not known"]
    ds = logging.getLogger("DeepSpeed")
    assert sum(isinstance(f, logging.Filter) for f in ds.filters) == 1
    with caplog.at_level(logging.WARNING):
        ds.propagate = True
        ds.warning("Setting accelerator to CPU. If you have GPU ...")
        ds.warning("ZeRO stage 3 is slow on CPU")
    assert "Setting accelerator" not in caplog.text and "ZeRO stage 3" in caplog.text


def test_debug_mode_shows_everything(clean_filters, monkeypatch):
    monkeypatch.setenv("CELLRLHF_DEBUG", "1")
    quiet_known_noise()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        warnings.warn(
            "`gradient_checkpointing` is deprecated and will be removed",
            FutureWarning,
            stacklevel=2,
        )
    assert len(seen) == 1


def test_library_progress_bars_default_off_and_a_users_choice_wins(monkeypatch):
    from cellrlhf.third_party_noise import LIBRARY_PROGRESS_BARS

    monkeypatch.delenv("CELLRLHF_DEBUG", raising=False)
    monkeypatch.delenv(LIBRARY_PROGRESS_BARS[0], raising=False)
    monkeypatch.setenv(LIBRARY_PROGRESS_BARS[1], "0")
    quiet_known_noise()
    import os

    assert os.environ[LIBRARY_PROGRESS_BARS[0]] == "1"
    assert os.environ[LIBRARY_PROGRESS_BARS[1]] == "0"
