"""Prompt groups split across training processes are scored whole (torch.distributed, gloo)."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from cellrlhf.reward.process_gather import distributed_world_size, gather_reward_batch

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch.distributed as dist
    from cellrlhf.cell2text.decoder import ExpressionDecoder
    from cellrlhf.cell2text.vocab import GeneVocab
    from cellrlhf.reward.fidelity_reward import GroupFidelityReward

    batch = json.loads(open(sys.argv[1]).read())
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    genes = tuple(f"GENE{i}" for i in range(12))
    reward = GroupFidelityReward(ExpressionDecoder(GeneVocab(genes), 3.0, -2.0))
    n = len(batch["prompts"])
    # rank r holds an uneven, contiguous slice; the middle group straddles both ranks
    cut = [0, 5, n] if world > 1 else [0, n]
    own = slice(cut[rank], cut[rank + 1])
    out = reward(
        batch["prompts"][own], batch["completions"][own],
        **{k: v[own] for k, v in batch.items() if k not in ("prompts", "completions")},
    )
    open(sys.argv[2], "w").write(json.dumps(out))
    if world > 1:
        dist.destroy_process_group()
    """
)


def test_single_process_is_a_no_op():
    assert distributed_world_size() == 1
    batch, own = gather_reward_batch({"a": [1, 2], "b": ["x", "y"]})
    assert batch == {"a": [1, 2], "b": ["x", "y"]} and own == slice(0, 2)
    with pytest.raises(ValueError, match="different lengths"):
        gather_reward_batch({"a": [1], "b": []})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_groups_straddling_two_processes_get_the_single_process_rewards(tmp_path):
    genes = [f"GENE{i}" for i in range(12)]
    completions = [
        "<cell> " + " ".join(genes[(i * 5) % 12 :][:4] + genes[: i % 3]) + " </cell>"
        for i in range(9)
    ]
    control = [1.0] * 12
    perturbed = [1.0 + (2.0 if g in ("GENE1", "GENE7") else 0.0) for g in genes]
    batch = {
        "prompts": ["a"] * 3 + ["b"] * 3 + ["c"] * 3,
        "completions": completions,
        "reference_perturbed": [perturbed] * 9,
        "reference_control": [control] * 9,
        "decoded_control": [[0.5] * 12] * 9,
        "reference_sentences": [["GENE1 GENE7 GENE0", "GENE7 GENE2"]] * 9,
    }
    (tmp_path / "batch.json").write_text(json.dumps(batch))
    (tmp_path / "run.py").write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")])

    def launch(rank: int, world: int, port: int):
        out = tmp_path / f"out{world}_{rank}.json"
        proc = subprocess.Popen(
            [sys.executable, str(tmp_path / "run.py"), str(tmp_path / "batch.json"), str(out)],
            env={**env, "RANK": str(rank), "WORLD_SIZE": str(world), "MASTER_PORT": str(port)},
        )
        return proc, out

    single, single_out = launch(0, 1, _free_port())
    assert single.wait(timeout=300) == 0
    port = _free_port()
    procs = [launch(rank, 2, port) for rank in range(2)]
    assert all(p.wait(timeout=300) == 0 for p, _ in procs)
    together = json.loads(procs[0][1].read_text()) + json.loads(procs[1][1].read_text())
    assert together == pytest.approx(json.loads(single_out.read_text()), abs=1e-12)
