"""build-tv-dataset against a real Prefect server started by the suite: deploy,
`prefect deployment run ... --watch`, cache hits, the UI's API (schedules, pause,
resume, runs with parameters), kill-and-resume, a corrupt video among good ones."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from loopback import free_port
from deployments import local
from emotionclip.core.catalog import REPO_ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    data = tmp_path_factory.mktemp("data")
    port = free_port()
    local.start_server(home, port)
    # heartbeats every 30 s (Prefect's minimum): a killed run is marked Crashed after 90 s
    names = local.register(home, port, extra_parameters={"data_root": str(data / "main")}, heartbeat_s=30)
    local.start_worker(home, port)
    env = local.server_env(home, port)
    # The reference run uses the deployment's own sample corpus (8 videos); the runs that
    # only check orchestration (custom parameters, concurrency, a killed worker) use a
    # 3-video corpus through the same deployment, which keeps the module's time down.
    from emotionclip.sample import make_sample_corpus

    corpus = data / "small-corpus"
    make_sample_corpus(corpus, n_videos=3, duration_s=24.0)
    small = {"source": "folder", "folder": str(corpus)}
    try:
        yield {"home": home, "port": port, "env": env, "data": data, "names": names, "small": small}
    finally:
        local.stop(home)


def _prefect(server, *args, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prefect", *args], env=server["env"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout)


def _client_call(server, coro_fn):
    """Run `coro_fn(client)` against the test server from this process."""
    from prefect.client.orchestration import PrefectClient

    async def main():
        async with PrefectClient(api=server["env"]["PREFECT_API_URL"]) as client:
            return await coro_fn(client)

    return asyncio.run(main())


def _run_deployment(server, name="build-tv-dataset/sample-tiny", params: dict | None = None) -> str:
    args = ["deployment", "run", name, "--watch", "--watch-timeout", "800"]
    for k, v in (params or {}).items():
        args += ["--param", f"{k}={json.dumps(v)}"]
    out = _prefect(server, *args)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Completed" in out.stdout, out.stdout[-2000:]
    return out.stdout


def _manifest(root: Path) -> pd.DataFrame:
    from emotionclip.core.manifest_store import read_manifests

    df = read_manifests(root / "manifests")
    return df.sort_values("clip_id").reset_index(drop=True)


def _latest_flow_run(server, deployment_name="sample-tiny"):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    async def fn(client):
        runs = await client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment_name])),
            sort=FlowRunSort.START_TIME_DESC, limit=1)
        return runs[0]

    return _client_call(server, fn)


@pytest.fixture(scope="module")
def reference(server) -> pd.DataFrame:
    """An uninterrupted run of the sample deployment: its manifests."""
    _run_deployment(server)
    return _manifest(server["data"] / "main")


@pytest.fixture(scope="module")
def small_reference(server) -> pd.DataFrame:
    """An uninterrupted run of the sample deployment on the 3-video corpus."""
    root = server["data"] / "small-reference"
    _run_deployment(server, params={**server["small"], "data_root": str(root)})
    return _manifest(root)


def test_sample_deployment_runs_and_second_run_is_cached(server, reference):
    assert "build-tv-dataset/sample-tiny" in server["names"]
    root = server["data"] / "main"
    first = reference
    assert len(first) > 0
    assert (root / "card" / "README.md").exists()
    failures = pd.read_parquet(root / "manifests" / "failures.parquet")
    assert len(failures) == 0, failures.to_dict("records")

    _run_deployment(server)
    run = _latest_flow_run(server)

    async def batch_outcomes(client):
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter
        from prefect.client.schemas.filters import FlowRunFilterParentFlowRunId

        sub = await client.read_flow_runs(flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id])))
        arts = await client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[r.id for r in sub])))
        return [r.name for r in sub], [json.loads(a.data) if isinstance(a.data, str) else a.data
                                       for a in arts if a.type == "table"]

    # Each batch run (a subflow, named batch-0001-of-0001) shows per video each stage's
    # outcome: all cached (up to date from the stage markers), none ran.
    names, tables = _client_call(server, batch_outcomes)
    assert names == ["batch-0001-of-0001"], names
    rows = [row for table in tables for row in table]
    stages = ("words", "frames", "sentences", "sentiment", "humans", "clips")
    assert len(rows) == 8 and all(row[s] == "cached" for row in rows for s in stages), rows
    pd.testing.assert_frame_equal(first, _manifest(root))


def test_schedules_pause_resume_and_run_with_parameters(server):
    """What the UI does, through the same REST API."""

    async def fn(client):
        dep = await client.read_deployment_by_name("build-tv-dataset/youtube-paper")
        assert dep.schedules and dep.schedules[0].schedule.cron == "0 3 * * 1"
        assert dep.schedules[0].active
        await client.pause_deployment(dep.id)
        paused = await client.read_deployment(dep.id)
        await client.resume_deployment(dep.id)
        resumed = await client.read_deployment(dep.id)
        sched = dep.schedules[0]
        await client.update_deployment_schedule(dep.id, sched.id, active=False)
        inactive = (await client.read_deployment(dep.id)).schedules[0].active
        await client.update_deployment_schedule(dep.id, sched.id, active=True)
        return paused.paused, resumed.paused, inactive

    paused, resumed, inactive = _client_call(server, fn)
    assert paused is True and resumed is False and inactive is False

    # A run with other parameters, as from the UI's "Custom run".
    other = server["data"] / "custom"

    async def create(client):
        dep = await client.read_deployment_by_name("build-tv-dataset/sample-tiny")
        fr = await client.create_flow_run_from_deployment(
            dep.id, parameters={**server["small"], "data_root": str(other),
                                "overrides": {"stages.filter.max_neutral": 1.0}})
        return fr.id

    run_id = _client_call(server, create)
    state = _wait_final(server, [run_id])[run_id]
    assert state.is_completed(), state
    # max_neutral 1.0 (the run's override) rejects no clip for its neutral score
    assert len(_manifest(other)) > 0
    rejected = pd.read_parquet(other / "manifests" / "rejected.parquet")
    assert len(rejected) > 0 and "neutral" not in set(rejected["reason"]), rejected["reason"].value_counts()


def _wait_final(server, run_ids, timeout=800):
    deadline = time.monotonic() + timeout
    states = {}
    while time.monotonic() < deadline:
        states = {rid: _client_call(server, lambda c, rid=rid: c.read_flow_run(rid)).state for rid in run_ids}
        if all(st.is_final() for st in states.values()):
            break
        time.sleep(2)
    return states


def test_two_concurrent_runs_do_not_corrupt_outputs(server, small_reference):
    root = server["data"] / "concurrent"

    async def create(client):
        dep = await client.read_deployment_by_name("build-tv-dataset/sample-tiny")
        params = {**server["small"], "data_root": str(root)}
        return [(await client.create_flow_run_from_deployment(dep.id, parameters=params)).id for _ in range(2)]

    states = _wait_final(server, _client_call(server, create))
    assert all(st.is_completed() for st in states.values()), states
    pd.testing.assert_frame_equal(small_reference, _manifest(root))
    assert len(pd.read_parquet(root / "manifests" / "failures.parquet")) == 0


def _kill_tree(pid: int) -> None:
    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    procs = parent.children(recursive=True) + [parent]
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=30)  # gone (or zombies) before anyone checks the pid


def test_kill_worker_mid_run_then_resume(server, small_reference):
    root = server["data"] / "killed"
    params = {**server["small"], "data_root": str(root)}
    out = _prefect(server, "deployment", "run", "build-tv-dataset/sample-tiny",
                   *[a for k, v in params.items() for a in ("--param", f"{k}={json.dumps(v)}")])
    assert out.returncode == 0, out.stderr
    # Wait until the run is mid-way: some video has finished its sentences stage.
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not list(root.glob("videos/*/.stages/sentences.json")):
        time.sleep(0.5)
    assert list(root.glob("videos/*/.stages/sentences.json")), "run never got going"
    assert not (root / "manifests" / "_manifest.json").exists()
    killed = _latest_flow_run(server)
    assert killed.state.is_running()
    worker_pid = int((server["home"] / "worker.pid").read_text())
    _kill_tree(worker_pid)
    killed_at = time.monotonic()

    local.start_worker(server["home"], server["port"])
    _run_deployment(server, params=params)
    pd.testing.assert_frame_equal(small_reference, _manifest(root))

    # The killed run's heartbeats stopped: the crash-detection automation marks it
    # Crashed (it would otherwise show Running forever).
    async def state_of(client):
        return (await client.read_flow_run(killed.id)).state

    deadline = killed_at + 300
    while time.monotonic() < deadline and not _client_call(server, state_of).is_crashed():
        time.sleep(5)
    state = _client_call(server, state_of)
    assert state.is_crashed(), state
    assert "No heartbeat" in (state.message or "")


def test_corrupt_video_is_recorded_and_others_complete(server, tmp_path):
    from emotionclip.sample import make_sample_corpus

    folder = tmp_path / "corpus"
    make_sample_corpus(folder, n_videos=2, duration_s=12.0)  # enough good videos to show the others go on
    good = sorted(folder.glob("*.mp4"))
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    shutil.copy(next(folder.glob("*.en.vtt")), folder / "broken.en.vtt")
    root = tmp_path / "data"
    _run_deployment(server, params={"source": "folder", "folder": str(folder), "data_root": str(root)})
    failures = pd.read_parquet(root / "manifests" / "failures.parquet")
    assert failures["video_id"].tolist() == ["broken"]
    assert failures["stage"].iloc[0] in ("download", "frames", "humans")
    assert "broken" in failures["error"].iloc[0]
    kept = _manifest(root)
    assert set(kept["video_id"]) <= {p.stem for p in good}
    assert len(kept) > 0


def test_demo_chain_pretrain_tiny_then_linear_probe_sample(server, reference, tmp_path):
    """`make demo`'s chain on the server, after the reference run of sample-tiny:
    pretrain/tiny trains a few steps on those manifests, then linear-probe/sample writes the
    miniature benchmarks into the data root and probes the checkpoint pretrain/tiny wrote
    (found through `checkpoint_from_run`, pointed here at this test's run folder; without a
    checkpoint the profile's model is probed, tests/test_eval_sample.py)."""
    from deployments.definitions import DEMO_CHAIN, deployment
    from emotionclip.evaluation.sample import DATASETS, is_sample
    from emotionclip.training.checkpoint import latest_checkpoint

    assert set(DEMO_CHAIN) <= set(server["names"])
    # "the newest pretrain/tiny checkpoint": the folder pretrain/tiny writes to
    assert (deployment("linear-probe/sample").parameters["checkpoint_from_run"]
            == deployment("pretrain/tiny").parameters["out_dir"])

    async def schemas(client):
        return [(await client.read_deployment_by_name(n)).parameter_openapi_schema for n in DEMO_CHAIN]

    # the UI's "Custom run" form: every parameter described (from the flows' docstrings)
    for schema in _client_call(server, schemas):
        assert all(p.get("description") for p in schema["properties"].values()), schema["properties"]

    run = tmp_path / "pretrain-tiny"
    _run_deployment(server, "pretrain/tiny", params={"out_dir": str(run)})
    ckpt = latest_checkpoint(run)
    assert ckpt, list(run.rglob("*"))
    out = tmp_path / "probe"
    _run_deployment(server, "linear-probe/sample", params={"out_dir": str(out), "checkpoint_from_run": str(run)})
    assert all(is_sample(server["data"] / "main" / "eval-samples" / d) for d in DATASETS)
    df = pd.read_parquet(out / "results.parquet")
    assert set(df.dataset) == set(DATASETS)
    assert set(df.model) == {Path(ckpt).name} and df["value"].notna().all()
    assert (out / "results.md").exists()


def test_ablation_tiny_deployment_trains_and_compares_two_variants(server, reference, tmp_path):
    """ablation/tiny end to end on the server, on the sample-tiny manifests the reference
    run built: two variants (the base and beta = 1), each pre-trained and probed, then the
    comparison table; the dataset's manifests are left as they were."""
    assert "ablation/tiny" in server["names"]
    pointer = server["data"] / "main" / "manifests" / "_manifest.json"
    before = pointer.read_bytes()
    out = tmp_path / "ablation"
    _run_deployment(server, "ablation/tiny", params={"out_dir": str(out)})
    table = pd.read_parquet(out / "ablation.parquet")
    assert len(set(table["variant"])) == 2 and (table["status"] == "done").all(), table
    assert (out / "ablation.md").exists()
    assert pointer.read_bytes() == before
