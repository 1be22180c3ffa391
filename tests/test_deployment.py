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


def _run_deployment(server, name="build-tv-dataset/sample-tiny", params: dict | None = None,
                    expect_ok: bool = True) -> str:
    args = ["deployment", "run", name, "--watch", "--watch-timeout", "800"]
    for k, v in (params or {}).items():
        args += ["--param", f"{k}={json.dumps(v)}"]
    out = _prefect(server, *args)
    if expect_ok:
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert "Completed" in out.stdout, out.stdout[-2000:]
    return out.stdout


def _flow_run_id(stdout: str) -> str:
    """The id `prefect deployment run` printed for the run it created."""
    import re

    return re.search(r"UUID:\s*([0-9a-f-]{36})", stdout).group(1)


def _runs_under(server, run_id: str):
    """The flow run `run_id`, its subflow and child deployment runs (recursively), and
    the task runs of all of them."""
    from uuid import UUID

    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId, TaskRunFilter
    from prefect.client.schemas.filters import TaskRunFilterFlowRunId

    async def fn(client):
        runs, todo = [await client.read_flow_run(UUID(run_id))], [UUID(run_id)]
        while todo:
            children = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=todo)))
            runs += children
            todo = [c.id for c in children]
        tasks = await client.read_task_runs(task_run_filter=TaskRunFilter(
            flow_run_id=TaskRunFilterFlowRunId(any_=[r.id for r in runs])), limit=200)
        return runs, tasks

    return _client_call(server, fn)


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
    server["small_run_id"] = _flow_run_id(_run_deployment(server, params={**server["small"], "data_root": str(root)}))
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


def test_every_stage_is_its_own_task_run_made_in_tasks(server, small_reference):
    """A build of 3 sample videos: each of words, frames, sentences, sentiment, humans,
    clips (once per batch, over its videos), manifests and card is its own task run of a
    task made in tasks/; the graph's edges follow the chain (words, frames -> sentences
    -> sentiment -> humans -> clips)."""
    from tasks.dataset import TASKS

    runs, task_runs = _runs_under(server, server["small_run_id"])
    assert [r.name for r in runs[1:]] == ["batch-0001-of-0001"]
    by_name = {t.name: t for t in task_runs}
    stages = ("words", "frames", "sentences", "sentiment", "humans", "clips")
    for stage in stages:
        t = by_name[f"{stage}-batch-0001-of-0001"]
        assert t.state.is_completed() and t.task_key == TASKS[stage].task_key, (stage, t.task_key)
    for name in ("import", "manifests", "card"):
        [t] = [t for t in task_runs if t.task_key == TASKS[name].task_key]
        assert t.state.is_completed(), name
    assert len(task_runs) == len(stages) + 3 + 1, sorted(by_name)  # + the link to the batch subflow

    def upstream_of(t):
        ids = {i.id for inputs in t.task_inputs.values() for i in inputs if getattr(i, "input_type", "") == "task_run"}
        return {u.name.split("-batch")[0] for u in task_runs if u.id in ids}

    def upstream(stage):
        return upstream_of(by_name[f"{stage}-batch-0001-of-0001"])

    assert upstream("words") == upstream("frames") == set()
    assert upstream("sentences") == {"words", "frames"}
    assert [upstream(s) for s in ("sentiment", "humans", "clips")] == [{"sentences"}, {"sentiment"}, {"humans"}]
    # the build's own graph: import -> the batch -> manifests -> card
    key = {name: TASKS[name].task_key for name in ("import", "manifests", "card")}
    [imp], [man], [crd] = ([t for t in task_runs if t.task_key == key[n]] for n in ("import", "manifests", "card"))
    [link] = [t for t in task_runs if t.flow_run_id == runs[0].id and t.name.startswith("process-videos")]
    assert (upstream_of(link), upstream_of(man), upstream_of(crd)) == ({imp.name}, {link.name}, {man.name})


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


def _steps(runs, task_runs):
    """The step runs of a build-train-evaluate run (runs[0]), linked to it through its
    task runs, in start order."""
    links = {t.id for t in task_runs if t.flow_run_id == runs[0].id}
    return sorted((r for r in runs if r.parent_task_run_id in links), key=lambda r: r.start_time)


def test_demo_is_one_run_that_builds_trains_and_evaluates(server, reference, tmp_path):
    """`make demo`'s one run, build-train-evaluate/sample, on the server after the reference
    build: sample-tiny (up to date), pretrain/tiny on its manifests, linear-probe/sample on
    the checkpoint pretrain wrote; three runs linked to it, in that order, each Completed."""
    from deployments.definitions import DEMO, DEMO_CHAIN
    from emotionclip.evaluation.sample import DATASETS, is_sample
    from emotionclip.training.checkpoint import latest_checkpoint

    assert DEMO in server["names"] and set(DEMO_CHAIN) <= set(server["names"])

    async def schemas(client):
        return [(await client.read_deployment_by_name(n)).parameter_openapi_schema for n in (DEMO, *DEMO_CHAIN)]

    # the UI's "Custom run" form: every parameter described (from the flows' docstrings)
    for schema in _client_call(server, schemas):
        assert all(p.get("description") for p in schema["properties"].values()), schema["properties"]

    run, out = tmp_path / "pretrain-tiny", tmp_path / "probe"
    stdout = _run_deployment(server, DEMO, params={"pretrain": {"out_dir": str(run)}, "probe": {"out_dir": str(out)}})
    runs, task_runs = _runs_under(server, _flow_run_id(stdout))
    steps = _steps(runs, task_runs)
    assert len(steps) == 3 and all(r.state.is_completed() for r in steps), [(r.name, r.state) for r in steps]
    assert [r.name for r in steps] == [f"{runs[0].name}-{s}" for s in ("build", "pretrain", "linear-probe")]
    assert [r.parameters.get("out_dir") for r in steps[1:]] == [str(run), str(out)]
    assert steps[1].parameters["manifests"] == str(server["data"] / "main" / "manifests")
    assert runs[0].state.is_completed() and "trained" in runs[0].state.message, runs[0].state
    ckpt = latest_checkpoint(run)
    assert ckpt, list(run.rglob("*"))
    assert all(is_sample(server["data"] / "main" / "eval-samples" / d) for d in DATASETS)
    df = pd.read_parquet(out / "results.parquet")
    assert set(df.dataset) == set(DATASETS)
    assert set(df.model) == {Path(ckpt).name} and df["value"].notna().all()


def test_a_failed_step_stops_the_demo_with_its_reason(server, reference, tmp_path):
    from deployments.definitions import DEMO

    missing = tmp_path / "no-manifests-here"
    stdout = _run_deployment(server, DEMO, params={"pretrain": {"manifests": str(missing),
                                                                "out_dir": str(tmp_path / "run")}}, expect_ok=False)
    runs, task_runs = _runs_under(server, _flow_run_id(stdout))
    parent = runs[0]
    assert parent.state.is_failed() and "stopped at pretrain" in parent.state.message, parent.state
    assert [r.state.name for r in _steps(runs, task_runs)] == ["Completed", "Failed"]  # no probe run


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
