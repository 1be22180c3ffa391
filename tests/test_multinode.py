"""Multi-node training on one machine: `emotionclip train --nnodes 2` launched twice
(two torchrun agents in separate processes, c10d rendezvous on 127.0.0.1, gloo on
the CPU) trains exactly as one node with two processes, and resumes; every
listener of the run binds 127.0.0.1. Tiny model, a handful of steps."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from emotionclip.models import load_checkpoint
from emotionclip.training import checkpoint as ckpt
from emotionclip.training.distributed import listen_socket
from emotionclip.training.launch import Rendezvous, split_endpoint, torchrun_command
from emotionclip.training.metrics import read_jsonl
from training_data import write_manifest

N_STEPS, K_STEPS = 4, 3  # 2 steps per epoch: the stop (K) is mid-epoch, N crosses an epoch end


@pytest.fixture(scope="module")
def corpus(clip_corpus, tmp_path_factory):
    root, _, df = clip_corpus
    manifest = write_manifest(df, tmp_path_factory.mktemp("multinode") / "clips-00000.parquet")
    return root, manifest


def _cli(corpus, out: Path, max_steps: int, *extra: str) -> list[str]:
    root, manifest = corpus
    # 8 clips, global batch 4: 2 clips per rank and step, 2 steps per epoch; dropout and
    # random crops stay on (the same global rank draws the same numbers on any node).
    # beta 0.1 and eps 1e-6 as in test_training_loop's DDP test: with beta 10 the loss of
    # these clips is ~1e-7, a cancellation that CPU rounding (MKL, run to run) dominates,
    # and Adam with eps 1e-10 turns that noise into full-size steps
    sets = {"batch_size": 4, "num_workers": 0, "num_frames": 2, "epochs": 3, "log_every_steps": 1,
            "ckpt_every_steps": K_STEPS, "keep_checkpoints": 5, "warmup_steps": 1, "lr_encoder": 1e-4,
            "lr_temporal": 1e-4, "beta": 0.1, "eps": 1e-6}
    cmd = [sys.executable, "-m", "emotionclip.cli", "train", "--manifests", str(manifest), "--out", str(out),
           "--profile", "tiny", "--data-root", str(root), "--max-steps", str(max_steps)]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    return cmd + list(extra)


def _env() -> dict[str, str]:
    # one intra-op thread in every rank: torchrun sets it only for nproc_per_node > 1, and a
    # different thread count may sum floats in another order
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}


def _launch(cmds: dict[str, list[str]], logs: Path) -> list[tuple[str, str]]:
    """Start the commands (log name: command) together, one process each, in that
    order; wait for all; return the (process, address) of every TCP listener their
    process trees opened meanwhile."""
    logs.mkdir(parents=True, exist_ok=True)
    procs, files = [], []
    for i, cmd in cmds.items():
        f = open(logs / f"{i}.log", "w")
        files.append(f)
        procs.append(subprocess.Popen(cmd, env=_env(), stdout=f, stderr=subprocess.STDOUT))
    listeners: set[tuple[str, str]] = set()
    deadline = time.monotonic() + 600
    try:
        while any(p.poll() is None for p in procs):
            assert time.monotonic() < deadline, "training did not finish"
            listeners |= _listeners([p.pid for p in procs])
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in files:
            f.close()
    for i, p in zip(cmds, procs):
        assert p.returncode == 0, f"{i}: exit {p.returncode}\n" + (logs / f"{i}.log").read_text()[-4000:]
    return sorted(listeners)


def _listeners(pids: list[int]) -> set[tuple[str, str]]:
    found = set()
    for pid in pids:
        try:
            tree = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for proc in tree:
            try:
                conns = proc.net_connections(kind="inet")
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            found |= {(f"{proc.name()}[{proc.pid}]", c.laddr.ip) for c in conns if c.status == psutil.CONN_LISTEN}
    return found


def _free_port() -> int:
    with listen_socket("127.0.0.1", 0) as s:
        return s.getsockname()[1]


def _two_nodes(corpus, out: Path, max_steps: int, *extra: str) -> dict[str, list[str]]:
    """The commands of 2 nodes x 1 process, node 1 first: it waits for node 0's store."""
    endpoint = f"127.0.0.1:{_free_port()}"
    return {f"node{r}": _cli(corpus, out, max_steps, "--nnodes", "2", "--node-rank", str(r), "--nproc-per-node",
                             "1", "--rdzv-endpoint", endpoint, "--rdzv-id", "test-multinode", *extra)
            for r in (1, 0)}


def _state(out: Path, name: str | None = None) -> dict[str, torch.Tensor]:
    path = ckpt.latest_checkpoint(out) if name is None else f"{ckpt.checkpoint_dir(out)}/{name}"
    return load_checkpoint(path)["model"]


def _differ(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, float]:
    """Parameters that differ beyond rounding (equal in practice; one step's worth of
    learning rate, 1e-4, is 100x the tolerance), with their largest difference."""
    assert a.keys() == b.keys()
    return {k: float((a[k] - b[k]).abs().max()) for k in a
            if not torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6)}


@pytest.mark.slow
def test_two_nodes_train_and_resume_as_one_node_of_two_processes(corpus, tmp_path):
    one, two = tmp_path / "1x2", tmp_path / "2x1"
    # the uninterrupted 1 node x 2 processes (N steps) alongside 2 nodes x 1 process (K steps):
    # independent runs, together to overlap their start-up waits
    listeners = _launch({"1x2": _cli(corpus, one, N_STEPS, "--nproc", "2"), **_two_nodes(corpus, two, K_STEPS)},
                        tmp_path / "logs")
    # the rendezvous stores (the launchers), rank 0's stores and gloo's pairs, all on loopback
    # (seen: both launchers and the 4 workers; at least some workers, or the check is vacuous)
    assert len({proc for proc, _ in listeners}) >= 4, listeners
    assert {ip for _, ip in listeners} == {"127.0.0.1"}, listeners
    step_k = ckpt.step_checkpoint_name(K_STEPS)
    assert ckpt.latest_checkpoint(two).endswith(step_k)
    # after K steps on 2 nodes x 1 process: the very parameters of 1 node x 2 processes
    bad = _differ(_state(one, step_k), _state(two))
    assert not bad, f"2x1 differs from 1x2 after {K_STEPS} steps: {bad}"

    _launch(_two_nodes(corpus, two, N_STEPS, "--resume", "latest"), tmp_path / "logs-resume")
    logs = "".join(p.read_text() for p in (tmp_path / "logs-resume").iterdir())
    assert f"resumed from {two / 'checkpoints' / step_k}" in logs
    a, b = _state(one), _state(two)
    assert ckpt.latest_checkpoint(two).endswith(ckpt.epoch_checkpoint_name(1, N_STEPS))
    bad = _differ(a, b)
    assert not bad, f"2x1 resumed at step {K_STEPS} differs from the uninterrupted 1x2: {bad}"
    losses = [r["loss"] for r in read_jsonl(two / "metrics.jsonl")]
    assert [r["step"] for r in read_jsonl(two / "metrics.jsonl")] == list(range(1, N_STEPS + 1))
    assert losses == pytest.approx([r["loss"] for r in read_jsonl(one / "metrics.jsonl")], rel=1e-5)
    # training moved the parameters after the resume point: the comparison can fail
    assert _differ(a, _state(one, step_k))


def test_torchrun_command_maps_the_multinode_options():
    rdzv = Rendezvous(nnodes=2, node_rank=1, endpoint="10.0.0.5:29500", run_id="job7")
    cmd = torchrun_command("out/train_config.json", 4, rdzv, local_addr="10.0.0.6")
    assert cmd[1:3] == ["-m", "torch.distributed.run"]
    assert {"--nnodes=2", "--nproc_per_node=4", "--rdzv-backend=c10d", "--rdzv-endpoint=10.0.0.5:29500",
            "--rdzv-id=job7", "--local-addr=10.0.0.6", "--max-restarts=0"} <= set(cmd)
    assert any(a.startswith("--rdzv-conf=is_host=false") for a in cmd)
    assert cmd[-4:] == ["-m", "emotionclip.training.launch", "--config", "out/train_config.json"]
    assert split_endpoint("[::1]:1234") == ("::1", 1234) and split_endpoint("node0") == ("node0", 29400)
    with pytest.raises(ValueError, match="--rdzv-endpoint"):
        Rendezvous(nnodes=2)
    with pytest.raises(ValueError, match="--node-rank"):
        Rendezvous(nnodes=2, node_rank=2, endpoint="h:1")


def test_cli_multinode_usage_errors_are_one_line(corpus, tmp_path):
    """No endpoint for several nodes; node 0 given an endpoint that is no address of
    its machine (TEST-NET-2): one line and exit 2, before torchrun starts."""
    from typer.testing import CliRunner

    from emotionclip.cli import app

    base = _cli(corpus, tmp_path / "out", 1)[3:]
    res = CliRunner().invoke(app, base + ["--nnodes", "2"])
    assert res.exit_code == 2 and "--rdzv-endpoint" in res.output, res.output
    res = CliRunner().invoke(app, base + ["--nnodes", "2", "--rdzv-endpoint", "198.51.100.7:29400"])
    assert res.exit_code == 2 and "node 0 cannot listen there" in res.output, res.output
    assert not (tmp_path / "out" / "checkpoints").exists()
