"""Every port the project opens listens on loopback only: the Dask task runner's
scheduler, workers and dashboard during a flow run, and the local Prefect server and
worker of `deployments/local.py`. A socket on 0.0.0.0 would expose them to the network."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow

LOOPBACK = {"127.0.0.1", "::1"}


def _tree(pids: list[int]) -> set[int]:
    """The processes `pids` and all their descendants that still run."""
    out: set[int] = set()
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            out |= {pid} | {c.pid for c in proc.children(recursive=True)}
        except psutil.NoSuchProcess:
            pass
    return out


def _listening(pids: set[int]) -> set[tuple[int, str, int]]:
    """(pid, address, port) of every listening TCP socket of `pids`."""
    return {
        (c.pid, c.laddr.ip, c.laddr.port)
        for c in psutil.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.pid in pids
    }


class _Sampler(threading.Thread):
    """Collects the listening sockets of a process tree until stopped."""

    def __init__(self, roots: list[int], every_s: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.roots, self.every_s = roots, every_s
        self.seen: set[tuple[int, str, int]] = set()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.seen |= _listening(_tree(self.roots))
            self._stop_event.wait(self.every_s)

    def stop(self) -> set[tuple[int, str, int]]:
        self._stop_event.set()
        self.join()
        self.seen |= _listening(_tree(self.roots))
        return self.seen


def _exposed(seen: set[tuple[int, str, int]]) -> list[str]:
    return sorted(f"pid {pid} listens on {ip}:{port}" for pid, ip, port in seen if ip not in LOOPBACK)


def test_dask_runner_listens_only_on_loopback(tmp_path):
    from emotionclip.sample import make_sample_corpus
    from flows.build_tv_dataset import build_tv_dataset

    corpus = tmp_path / "corpus"
    make_sample_corpus(corpus, n_videos=1, duration_s=12.0)
    sampler = _Sampler([os.getpid()])
    sampler.start()
    try:
        result = build_tv_dataset(source="folder", folder=str(corpus), data_root=str(tmp_path / "data"),
                                  overrides={"stages.humans.imgsz": 320}, task_runner="dask", max_workers=1)
    finally:
        seen = sampler.stop()
    # the video went through the Dask cluster (whether its stages succeed is for other tests)
    assert result["videos"] == 1, result
    # the Dask scheduler must have been seen listening, or the check proved nothing
    assert len(seen) >= 2, f"too few listening sockets sampled: {sorted(seen)}"
    assert not _exposed(seen), "; ".join(_exposed(seen))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_local_server_and_worker_listen_only_on_loopback(tmp_path):
    from deployments import local

    home: Path = tmp_path / "prefect-home"
    port = _free_port()
    try:
        server_pid = local.start_server(home, port)
        worker_pid = local.start_worker(home, port)
        # wait until the worker polls the server: any socket it opens is open by then
        log = home / "worker.log"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "started!" not in (log.read_text() if log.exists() else ""):
            time.sleep(1)
        seen = _listening(_tree([server_pid, worker_pid]))
        worker_log = log.read_text() if log.exists() else ""
    finally:
        local.stop(home)
    assert "started!" in worker_log, f"worker did not start: {worker_log[-2000:]}"
    assert any(p == port for _, _, p in seen), f"server port {port} not among {sorted(seen)}"
    assert not _exposed(seen), "; ".join(_exposed(seen))
