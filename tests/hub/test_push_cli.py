"""``cellrlhf push`` options: ``--config`` YAML, flags on top, one of model / dataset / space."""

from __future__ import annotations

import pytest

from cellrlhf.hub.push import PushOptions, make_parser


def _parse(argv):
    (options,) = make_parser().parse_args_and_config(argv)
    return options


def test_config_plus_flags(tmp_path):
    config = tmp_path / "push.yaml"
    config.write_text(
        "repo_id: me/cells\nmodel: runs/x/sft\nlicense: mit\neval_results: [a.json]\n"
    )
    options = _parse(["--config", str(config), "--private", "--repo-id", "me/other"])
    assert (options.repo_id, options.model, options.private) == ("me/other", "runs/x/sft", True)
    assert options.eval_results == ["a.json"] and options.license == "mit"
    options = _parse(["--config", str(config), "--eval-results", "b", "--eval_results", "c"])
    assert options.eval_results == ["b", "c"]
    options = _parse(["--space-for", "me/m", "--repo-id", "me/s", "--dry-run", "--show-card"])
    assert (options.space_for, options.dry_run, options.show_card) == ("me/m", True, True)


def test_unknown_keys_and_flags_are_refused(tmp_path, capsys):
    config = tmp_path / "push.yaml"
    config.write_text("repo_id: me/cells\nmodel: m\nrepo_type: model\n")
    with pytest.raises(SystemExit):
        _parse(["--config", str(config)])
    err = capsys.readouterr().err
    assert "unknown key(s) repo_type; remove or rename them (known keys: " in err
    assert "repo_id" in err
    with pytest.raises(SystemExit):
        _parse(["--model", "m", "--repo-id", "me/x", "--public"])
    assert "unrecognized arguments: --public" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "got"),
    [([], "none"), (["--model", "m", "--dataset", "d"], "--model, --dataset")],
)
def test_exactly_one_thing_to_push(argv, got):
    with pytest.raises(ValueError, match=rf"exactly one of --model DIR.*\(got {got}\)"):
        _parse([*argv, "--repo-id", "me/x"])
    with pytest.raises(ValueError, match="exactly one"):
        PushOptions(repo_id="me/x")


def test_help_leads_with_config():
    text = make_parser().format_help()
    assert "--config FILE.yaml" in "\n".join(text.splitlines()[:8])
    assert text.index("--config FILE.yaml") < text.index("--repo_id") and "inherited" not in text


def test_space_dry_run_prints_the_plan_and_card(capsys):
    from cellrlhf.hub.push import cli

    assert cli(["--space-for", "me/m", "--repo-id", "me/s", "--dry-run", "--show-card"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("would commit to space repository me/s: 3 files")
    assert "app.py" in out and "requirements.txt" in out and "\n# Chat with m\n" in out


@pytest.mark.parametrize(
    ("argv", "function", "expected"),
    [
        (
            ["--dataset", "d", "--license", "mit", "--revision", "dev", "--create-pr"],
            "push_dataset",
            {"private": False, "revision": "dev", "create_pr": True, "license": "mit"},
        ),
        (
            ["--space-for", "me/m", "--private", "--commit-message", "hi"],
            "push_space",
            {"private": True, "requirement": None, "commit_message": "hi"},
        ),
    ],
)
def test_cli_hands_the_options_to_the_push_function(monkeypatch, capsys, argv, function, expected):
    from cellrlhf.hub import push

    class _Info:
        commit_url = "https://huggingface.co/me/x/commit/1"

    calls = []
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.setattr(push, function, lambda *a, **k: calls.append((a, k)) or _Info())
    assert push.cli([*argv, "--repo-id", "me/x"]) == 0
    assert calls == [((argv[1], "me/x"), expected)]
    assert capsys.readouterr().out == f"{_Info.commit_url}\n"
