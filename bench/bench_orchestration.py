"""Orchestration overhead of the Prefect flow `build-tv-dataset` against the same
library stage functions called in a plain loop, same machine, same run.

    .venv/bin/python bench/bench_orchestration.py [--videos 3] [--duration 12] [--repeats 3]

Baseline ("plain"): `import_local_folder`, then `pipeline.run_video` per video,
`build_manifests`, `write_card_from_disk` (what the flow's tasks call). Measured:
the flow with task_runner="threads" (default worker count) and with
max_workers=1, the like-for-like sequential comparison. Every timed run writes
into a fresh data root, so no stage is skipped or cached; the sample corpus is
generated once and shared.

Warm-up: the plain loop and the flow each run in their own fresh subprocess
(models are cached per process, and Prefect's background threads stay out of
the baseline), and each subprocess first does one untimed warm-up run of its
own kind over a one-video corpus into a throwaway root (loads the tiny models,
imports, first flow/task registration). The flow subprocess starts the
ephemeral Prefect server (SQLite under a temporary PREFECT_HOME, 127.0.0.1)
before its warm-up; that start-up time is reported separately and is not part
of the per-video overhead. Both workers then stay up and the driver asks them
for timed runs in turn, rotating the order each repeat, so the load from other
users of the machine drifts over all kinds alike; medians are reported.

Goal: per-video overhead (flow - plain) / N under 1.5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GOAL_S = 1.5  # goal: orchestration overhead per video, in seconds
# Random tiny models score every emotion about 1/7, so the sample relaxes the neutral
# threshold (as the sample deployment does); detection at 320 like the sample deployment.
OVERRIDES = {"stages.filter.max_neutral": 0.5, "stages.humans.imgsz": 320}


def _env(tmp: Path) -> dict[str, str]:
    """Offline, nothing written to HOME, an ephemeral Prefect server under tmp."""
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)  # always the ephemeral server of this run
    env.update({
        "PREFECT_HOME": str(tmp / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(tmp / "hf"),
        "YOLO_OFFLINE": "1",
        "YOLO_CONFIG_DIR": str(tmp / "ultralytics"),
        "YOLO_AUTOINSTALL": "false",
        "MPLCONFIGDIR": str(tmp / "mpl"),
        "MPLBACKEND": "Agg",
        "TORCH_HOME": str(tmp / "torch"),
        "TOKENIZERS_PARALLELISM": "false",
    })
    return env


def _cpu_s() -> float:
    """CPU seconds of this process (all threads) plus its reaped children (ffmpeg)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _server_cpu_s(pid: int | None) -> float:
    """CPU seconds of the (still running) ephemeral server process and its children."""
    if pid is None:
        return 0.0
    import psutil

    try:
        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
        return sum(sum(p.cpu_times()[:2]) for p in procs)
    except psutil.Error:
        return 0.0


def _load1() -> float:
    return round(os.getloadavg()[0], 2)


# -- the two kinds of run (inside the worker subprocesses) ----------------------------


def run_plain(folder: str, data_root: str) -> dict[str, Any]:
    """The baseline: the library stage functions in a plain loop."""
    from emotionclip.stages.card import write_card_from_disk
    from emotionclip.core.catalog import load_catalog
    from emotionclip.stages.download import import_local_folder
    from emotionclip.stages.manifests import build_manifests
    from emotionclip.stages.chain import run_video

    cat = load_catalog(profile="tiny", data_root=data_root, overrides=OVERRIDES)
    ids = import_local_folder(cat, folder).video_ids
    skipped = 0
    for vid in ids:
        skipped += sum(bool(s.get("skipped")) for s in run_video(cat, vid).values())
    summary = build_manifests(cat, ids, [])
    write_card_from_disk(cat)
    return {"videos": len(ids), "kept": summary["kept"], "clips": summary["clips"], "skipped": skipped,
            "failures": summary["failures"]}


def run_flow(folder: str, data_root: str, max_workers: int | None) -> dict[str, Any]:
    """The flow, called directly (a flow run against the ephemeral server)."""
    from flows.build_tv_dataset import build_tv_dataset

    res = build_tv_dataset(source="folder", folder=folder, profile="tiny", data_root=data_root,
                           overrides=OVERRIDES, task_runner="threads", max_workers=max_workers)
    return {"videos": res["videos"], "kept": res.get("kept"), "clips": res.get("clips"),
            "failures": res["failures"], "processed": res["processed"]}


def _timed(fn, *args, server_pid: int | None = None) -> dict[str, Any]:
    load0, c0, s0 = _load1(), _cpu_s(), _server_cpu_s(server_pid)
    t = time.perf_counter()
    out = fn(*args)
    wall = time.perf_counter() - t
    return {**out, "wall_s": wall, "cpu_s": _cpu_s() - c0, "server_cpu_s": _server_cpu_s(server_pid) - s0,
            "load1_before": load0, "load1_after": _load1()}


def worker(mode: str, warm_corpus: str, work: Path, reply_fd: int) -> None:
    """Runs in a fresh subprocess: warm up, report ready, then one timed run per
    command line on stdin ({"corpus", "root", "max_workers"}), each into a fresh
    root, answering with one JSON line on `reply_fd`."""
    reply = os.fdopen(reply_fd, "w")

    def send(obj: dict[str, Any]) -> None:
        reply.write(json.dumps(obj) + "\n")
        reply.flush()

    ready: dict[str, Any] = {"mode": mode}
    server_pid = None
    if mode == "flow":
        from prefect.server.api.server import SubprocessASGIServer

        t = time.perf_counter()
        server = SubprocessASGIServer()  # the singleton the flow's client will use
        server.start()
        ready["server_startup_s"] = time.perf_counter() - t
        server_pid = server.server_process.pid if server.server_process else None
    t = time.perf_counter()
    if mode == "plain":
        run_plain(warm_corpus, str(work / "warm"))
    else:
        run_flow(warm_corpus, str(work / "warm"), None)
    ready["warmup_s"] = time.perf_counter() - t
    send(ready)

    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd.get("quit"):
            break
        if mode == "plain":
            send(_timed(run_plain, cmd["corpus"], cmd["root"]))
        else:
            send(_timed(run_flow, cmd["corpus"], cmd["root"], cmd["max_workers"], server_pid=server_pid))


# -- the driver ---------------------------------------------------------------------


class Worker:
    """A warm worker subprocess that runs one timed run per request, so the driver
    can interleave the plain loop and the flow while each keeps its own process."""

    def __init__(self, mode: str, tmp: Path, warm: Path) -> None:
        self.mode, self.work = mode, tmp / mode
        self.work.mkdir()
        self.log = self.work / "log.txt"
        r, w = os.pipe()
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", mode, "--warm-corpus", str(warm),
               "--work", str(self.work), "--reply-fd", str(w)]
        with open(self.log, "wb") as f:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(tmp), stdin=subprocess.PIPE, stdout=f,
                                         stderr=subprocess.STDOUT, pass_fds=[w], text=True)
        os.close(w)
        self.replies = os.fdopen(r)
        self.ready = self._read()

    def _read(self) -> dict[str, Any]:
        line = self.replies.readline()
        if not line:
            self.proc.wait()
            sys.stderr.write(self.log.read_text(errors="replace")[-6000:])
            raise SystemExit(f"{self.mode} worker failed with exit code {self.proc.returncode} (log above)")
        return json.loads(line)

    def run(self, **cmd: Any) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"quit": True}) + "\n")
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.replies.close()


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=3, help="sample videos (N)")
    ap.add_argument("--duration", type=float, default=12.0, help="seconds per sample video")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each kind (median reported)")
    ap.add_argument("--worker", choices=["plain", "flow"], help=argparse.SUPPRESS)
    ap.add_argument("--warm-corpus", help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--reply-fd", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        worker(args.worker, args.warm_corpus, args.work, args.reply_fd)
        return

    from emotionclip.core.catalog import load_catalog
    from emotionclip.sample import make_sample_corpus
    from emotionclip.zoo.tiny import build_tiny_models

    n = args.videos
    load_start = os.getloadavg()
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-orch-") as d:
        tmp = Path(d)
        os.environ.update(_env(tmp))  # build the tiny models offline too
        build_tiny_models(load_catalog(profile="tiny").models_path)  # no-op when they exist
        corpus, warm = tmp / "corpus", tmp / "warm_corpus"
        t = time.perf_counter()
        make_sample_corpus(corpus, n_videos=n, duration_s=args.duration)
        make_sample_corpus(warm, n_videos=1, duration_s=min(args.duration, 6.0), seed=1)
        corpus_s = time.perf_counter() - t

        # Started one after the other, so warm-ups and server start-up do not overlap.
        plain = Worker("plain", tmp, warm)
        flow = Worker("flow", tmp, warm)
        kinds = {"plain": (plain, None), "flow_threads": (flow, None), "flow_seq": (flow, 1)}
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
        try:
            for r in range(args.repeats):
                order = list(kinds)[r % 3:] + list(kinds)[:r % 3]  # rotate: drifting load hits all alike
                for kind in order:
                    w, max_workers = kinds[kind]
                    runs[kind].append(w.run(corpus=str(corpus), root=str(tmp / f"{kind}-{r}"),
                                            max_workers=max_workers))
        finally:
            plain.close()
            flow.close()
    total_s = time.perf_counter() - t_all

    for kind, rs in runs.items():  # a run that skipped or failed anything measures nothing
        for r in rs:
            if r.get("skipped") or r["failures"] or r["videos"] != n:
                raise SystemExit(f"{kind} run did not process all {n} videos cleanly: {r}")
    kept = {kind: [r["kept"] for r in rs] for kind, rs in runs.items()}
    if len({k for ks in kept.values() for k in ks}) != 1:
        print(f"WARNING: kept-clip counts differ between runs: {kept}")

    base = _median(runs["plain"], "wall_s")
    base_cpu = _median(runs["plain"], "cpu_s")
    print(f"bench_orchestration: N={n} videos x {args.duration:g} s, tiny profile, repeats={args.repeats}, "
          f"{os.cpu_count()} CPUs, load average at start {tuple(round(x, 2) for x in load_start)}")
    print(f"  sample corpus generated in {corpus_s:.1f} s; {kept['plain'][0]} clips kept per run")
    print(f"  ephemeral Prefect server start-up: {flow.ready['server_startup_s']:.2f} s (excluded below)")
    print(f"  warm-up (untimed, 1 video): plain {plain.ready['warmup_s']:.1f} s, flow {flow.ready['warmup_s']:.1f} s")
    print(f"  {'run':<28}{'wall s':>8}{'ratio':>8}{'overhead s/video':>18}{'CPU s':>8}"
          f"{'+server CPU s':>15}{'load1 before/after':>20}")
    labels = {"plain": "plain loop (baseline)", "flow_threads": "flow, threads (default)",
              "flow_seq": "flow, threads max_workers=1"}
    for kind in ("plain", "flow_threads", "flow_seq"):
        rs = runs[kind]
        wall, cpu = _median(rs, "wall_s"), _median(rs, "cpu_s")
        srv = _median(rs, "server_cpu_s")
        loads = f"{rs[-1]['load1_before']:.2f}/{rs[-1]['load1_after']:.2f}"
        over = "" if kind == "plain" else f"{(wall - base) / n:+.2f}"
        print(f"  {labels[kind]:<28}{wall:>8.2f}{wall / base:>8.3f}{over:>18}{cpu:>8.1f}"
              f"{'' if kind == 'plain' else f'{srv:.1f}':>15}{loads:>20}")
    print("  every timed run, wall s: " + "; ".join(
        f"{kind} " + ", ".join(f"{r['wall_s']:.2f}" for r in runs[kind]) for kind in runs))
    for kind in ("flow_seq", "flow_threads"):
        over = (_median(runs[kind], "wall_s") - base) / n
        cpu_over = (_median(runs[kind], "cpu_s") + _median(runs[kind], "server_cpu_s") - base_cpu) / n
        verdict = "meets" if over < GOAL_S else "MISSES"
        print(f"  {labels[kind]}: ratio flow/plain {_median(runs[kind], 'wall_s') / base:.3f}, "
              f"overhead {over:+.2f} s/video wall ({cpu_over:+.2f} s/video CPU incl. server) "
              f"-> {verdict} the goal of < {GOAL_S} s/video")
    print(f"  load average at end {tuple(round(x, 2) for x in os.getloadavg())}; bench took {total_s:.0f} s")


if __name__ == "__main__":
    main()
