"""build-tv-dataset at scale against the server the project ships
(`deployments.local.start_server`, with the limits and the crash-detection automation
`register` installs): a fully cached re-run of 1,000 videos records every task run,
drops no event and marks no run Crashed. Before batching, one task run per stage
(7,000 here) made the same server drop thousands of events and record a fraction
of the task runs. bench/bench_scale.py measures the same at 3,613 videos."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import pytest

from loopback import free_port
from deployments import local
from emotionclip.core.catalog import REPO_ROOT

pytestmark = pytest.mark.slow

VIDEOS = 1000
OVERRIDES = {"stages.filter.max_neutral": 0.5, "stages.humans.imgsz": 320}
HEARTBEAT_S = 30  # Prefect's minimum: the crash detector marks a run silent for 90 s Crashed


@pytest.fixture(scope="module")
def replicated(tmp_path_factory):
    """2 processed videos (the library's stages), replicated to 1,000 done videos
    (`replicate_dataset`: same media, every stage marker genuinely up to date), all
    of them in the corpus folder a re-run imports from."""
    from emotionclip.core.catalog import load_catalog
    from emotionclip.core.video_registry import VideoRegistry
    from emotionclip.sample import make_sample_corpus
    from emotionclip.stages.download import import_local_folder
    from emotionclip.stages.growth import adopt_data_root, replicate_dataset
    from emotionclip.stages.registry import STAGES
    from emotionclip.stages.chain import run_video

    tmp = tmp_path_factory.mktemp("scale")
    corpus, root = tmp / "corpus", tmp / "data"
    make_sample_corpus(corpus, n_videos=2, duration_s=12.0)
    catalog = load_catalog(profile="tiny", data_root=str(root), overrides=OVERRIDES)
    sources = import_local_folder(catalog, corpus, strict=True).video_ids
    for vid in sources:
        run_video(catalog, vid)
    registry = VideoRegistry(catalog)
    adopt_data_root(catalog, registry)
    replicate_dataset(catalog, registry, sources, VIDEOS, corpus=str(corpus))
    STAGES["manifests"].run(catalog, registry.done_ids(), [])
    return {"corpus": corpus, "root": root, "catalog": catalog}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The shipped local server with the deployments, limits and crash detection
    registered (heartbeats every 30 s), and one process worker."""
    home, port = tmp_path_factory.mktemp("prefect-home"), free_port()
    local.start_server(home, port)
    try:
        local.register(home, port, heartbeat_s=HEARTBEAT_S)
        local.start_worker(home, port)
        env = {**local.server_env(home, port), "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_S)}
        yield {"home": home, "env": env, "api": env["PREFECT_API_URL"]}
    finally:
        local.stop(home)


def _count(api: str, what: str, body: dict | None = None) -> int:
    r = httpx.post(f"{api}/{what}/count", json=body or {}, timeout=60)
    r.raise_for_status()
    return int(r.json())


def _state_count(api: str, state: str) -> int:
    return _count(api, "flow_runs", {"flow_runs": {"state": {"type": {"any_": [state]}}}})


def _build(server, **params) -> dict:
    """build-tv-dataset in its own process against the server (as `python -m` or a
    deployment run would be); its result."""
    code = ("import json, sys; from flows.build_tv_dataset import build_tv_dataset; "
            "print('RESULT ' + json.dumps(build_tv_dataset(**json.loads(sys.argv[1])), default=str))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps({"overrides": OVERRIDES, **params})],
                         env=server["env"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))[len("RESULT "):])


def _wait_recorded(api: str, expected: int) -> int:
    """Task runs are recorded from events, after the flow returned: give the server time."""
    deadline = time.monotonic() + 300
    while _count(api, "task_runs") < expected and time.monotonic() < deadline:
        time.sleep(2)
    return _count(api, "task_runs")


def test_cached_rerun_of_1000_videos_is_recorded_in_full(server, replicated):
    from emotionclip.stages.registry import is_up_to_date

    catalog, api = replicated["catalog"], server["api"]
    assert all(is_up_to_date(catalog, "clips", v) for v in ("rep-00001-sample_00", "rep-00998-sample_01"))
    tasks0, flows0, done0 = _count(api, "task_runs"), _count(api, "flow_runs"), _state_count(api, "COMPLETED")
    result = _build(server, source="folder", folder=str(replicated["corpus"]), data_root=str(replicated["root"]))
    assert result["processed"] == VIDEOS and result["failures"] == 0, result
    assert set(result["stage_runs"].values()) == {0}, result["stage_runs"]  # every stage found up to date
    assert result["batches"] == 20 and result["task_runs"] > result["batches"]

    assert _wait_recorded(api, tasks0 + result["task_runs"]) == tasks0 + result["task_runs"]
    assert _count(api, "flow_runs") - flows0 == 1 + result["batches"]
    assert _state_count(api, "COMPLETED") - done0 == 1 + result["batches"]
    assert _state_count(api, "CRASHED") == 0
    log = (server["home"] / "server.log").read_text(errors="replace")
    assert "Subscription queue is full" not in log and "dead letter queue" not in log


def test_batches_as_deployment_runs_on_a_worker_match_the_inline_run(server, tmp_path):
    """batch_runs=deployment: each batch a run of process-videos/batch that the worker
    picks up, named batch-000i-of-0002, a child of the build run in the UI; the
    parent records their videos and builds the manifests once, the same as inline."""
    import pandas as pd
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowRunFilter
    from prefect.client.schemas.filters import FlowRunFilterParentTaskRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from emotionclip.core.manifest_store import read_manifests
    from emotionclip.sample import make_sample_corpus

    corpus = tmp_path / "corpus"
    make_sample_corpus(corpus, n_videos=2, duration_s=6.0)
    runs = {}
    for mode in ("inline", "deployment"):
        runs[mode] = _build(server, source="folder", folder=str(corpus), data_root=str(tmp_path / mode),
                            videos_per_batch=1, batch_runs=mode)
        assert runs[mode]["processed"] == 2 and runs[mode]["failures"] == 0, runs[mode]
    frames = {m: read_manifests(tmp_path / m / "manifests").sort_values("clip_id").reset_index(drop=True)
              for m in runs}
    assert len(frames["inline"]) > 0
    pd.testing.assert_frame_equal(frames["inline"], frames["deployment"])
    assert not (tmp_path / "deployment" / "dataset" / "batches").exists() or \
        not any((tmp_path / "deployment" / "dataset" / "batches").iterdir())  # read and removed

    with temporary_settings({PREFECT_API_URL: server["api"]}):
        with get_client(sync_client=True) as client:
            children = client.read_flow_runs(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["batch"])))
            parent = client.read_flow_run(runs["deployment"]["run_id"])
            links = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [parent.id]}))
            linked = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_task_run_id=FlowRunFilterParentTaskRunId(any_=[t.id for t in links])))
    assert sorted(r.name for r in children) == ["batch-0001-of-0002", "batch-0002-of-0002"]
    assert all(r.state.is_completed() for r in children)
    assert {r.id for r in children} <= {r.id for r in linked}  # shown under the build run
    assert _state_count(server["api"], "CRASHED") == 0
