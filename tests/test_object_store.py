"""A data root on an object store: s3:// through s3fs against a real S3-compatible
server (SeaweedFS `weed mini`, tests/s3server.py) on 127.0.0.1. The library's IO on
S3 (atomic puts, listings other processes changed, fingerprints by ranged reads),
the download stage into an S3 root, build-tv-dataset in-process on S3 against the
same build on a local folder, and the build spread over two process workers
(separate processes, working and temporary folders) sharing the S3 root."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pandas as pd
import pytest

from emotionclip.core import io
from emotionclip.core.catalog import load_catalog
from emotionclip.core.manifest_store import read_manifests

OVERRIDES = {"stages.filter.max_neutral": 0.5, "stages.humans.imgsz": 320}


def _prefix() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values("clip_id").reset_index(drop=True)


# -- the server -------------------------------------------------------------------------
def test_server_listens_only_on_loopback_and_checks_credentials(s3_server):
    import time

    # every service of weed mini: master, volume, filer, S3, admin (HTTP + gRPC each); the
    # S3 gateway answering does not mean the admin server has bound its ports yet
    deadline = time.monotonic() + 60
    while not set(s3_server.ports.values()) <= {p for _, p in s3_server.listening()} and time.monotonic() < deadline:
        time.sleep(0.5)
    listening = s3_server.listening()
    assert {port for _, port in listening} == set(s3_server.ports.values()), listening
    assert {ip for ip, _ in listening} == {"127.0.0.1"}, listening
    import s3fs

    wrong = s3fs.S3FileSystem(key=s3_server.access_key, secret="not-the-secret",
                              endpoint_url=s3_server.endpoint_url, skip_instance_cache=True)
    with pytest.raises(PermissionError):
        wrong.ls(s3_server.bucket)


def test_wrong_credentials_are_one_clear_error_before_any_stage(s3_env, monkeypatch):
    import s3fs

    from emotionclip.core.catalog import CatalogError, check_data_root

    root = s3_env.url(_prefix())
    assert check_data_root(load_catalog(profile="tiny", data_root=root)) == root
    import fsspec

    fs, path = fsspec.core.url_to_fs(root)
    fs.invalidate_cache()
    assert not [p for p in (fs.ls(path) if fs.exists(path) else []) if ".write-check-" in p]  # probe removed
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    s3fs.S3FileSystem.clear_instance_cache()
    with pytest.raises(CatalogError, match=f"data root {root} is not writable.*credentials"):
        check_data_root(load_catalog(profile="tiny", data_root=root))
    s3fs.S3FileSystem.clear_instance_cache()


# -- the library's IO on S3 ------------------------------------------------------------
def test_io_on_s3(s3_env, tmp_path):
    root = s3_env.url(_prefix())
    io.atomic_write_json(f"{root}/a/b.json", {"x": 1})
    assert io.exists(f"{root}/a/b.json") and io.read_json(f"{root}/a/b.json") == {"x": 1}
    io.atomic_write_parquet(f"{root}/t.parquet", pd.DataFrame({"v": [1, 2, 3]}), metadata={"k": "v"})
    assert io.read_parquet(f"{root}/t.parquet")["v"].tolist() == [1, 2, 3]
    assert io.parquet_metadata(f"{root}/t.parquet")["k"] == "v"
    # a fingerprint reads the Parquet footer by ranged reads; an overwrite is noticed
    fp = io.fingerprint_output(f"{root}/t.parquet")
    assert io.check_output(f"{root}/t.parquet", fp) is None
    io.atomic_write_parquet(f"{root}/t.parquet", pd.DataFrame({"v": [1, 2, 4]}), metadata={"k": "v"})
    assert io.check_output(f"{root}/t.parquet", fp) is not None
    # a folder upload, then a recursive remove; a missing path is no error
    (tmp_path / "up").mkdir()
    for name in ("v.mp4", "v.en.vtt"):
        (tmp_path / "up" / name).write_bytes(name.encode())
    io.upload_folder(tmp_path / "up", f"{root}/raw")
    with io.open_file(f"{root}/raw/v.en.vtt") as f:
        assert f.read() == b"v.en.vtt"
    io.remove(f"{root}/raw", recursive=True)
    assert not io.exists(f"{root}/raw/v.mp4")
    io.remove(f"{root}/never-written.json")


def test_a_file_another_process_wrote_after_a_listing_is_seen(s3_env):
    """Workers share the root: a listing this process made must not hide what another
    one wrote since (fsspec caches listings for the life of a process by default), e.g.
    a stage marker a batch run on another machine wrote next to one seen before."""
    import fsspec

    stages = f"{s3_env.url(_prefix())}/videos/a/.stages"
    io.atomic_write_json(f"{stages}/words.json", {})
    fs, path = fsspec.core.url_to_fs(stages)
    assert [p.rsplit("/", 1)[-1] for p in fs.ls(path)] == ["words.json"]
    code = "import sys; from emotionclip.core import io; io.atomic_write_json(sys.argv[1], {})"
    subprocess.run([sys.executable, "-c", code, f"{stages}/frames.json"], check=True, env=os.environ)
    assert io.exists(f"{stages}/frames.json")
    assert [p.rsplit("/", 1)[-1] for p in fs.ls(path)] == ["frames.json", "words.json"]


def test_download_into_an_s3_root(s3_env, tmp_path):
    """yt-dlp writes local files: they are staged locally and uploaded, info.json
    (the done marker) last; the archive is on the root too."""
    from emotionclip.sample import make_test_video
    from emotionclip.stages.download import load_archive, run_download
    from loopback import LoopbackServer, Route

    mp4 = make_test_video(tmp_path / "v.mp4", duration_s=1.0, width=320, height=240, fps=10).read_bytes()
    vtt = b"WEBVTT\n\n00:00:00.000 --> 00:00:00.800\nhello there\n"
    page = (b'<!doctype html><html><head><title>Episode 1</title></head><body><video controls>'
            b'<source src="/media/ep1.mp4" type="video/mp4"><track kind="captions" srclang="en" '
            b'label="English" src="/media/ep1.en.vtt"></video></body></html>')
    catalog = load_catalog(data_root=s3_env.url(_prefix()), overrides={"stages.download": {
        "retries": 1, "sleep_requests_s": 0, "sleep_interval_s": 0.001, "max_sleep_interval_s": 0.01}})
    routes = {"/show/ep1.html": Route(page, "text/html"), "/media/ep1.mp4": Route(mp4, "video/mp4"),
              "/media/ep1.en.vtt": Route(vtt, "text/vtt")}
    with LoopbackServer(routes) as srv:
        summary = run_download(catalog, url=srv.url("/show/ep1.html"))
        vid = summary["video_id"]
        assert summary["status"] == "downloaded" and summary["bytes"] == len(mp4)
        info = io.read_json(catalog.artifact("info", vid))
        with io.open_file(f"{catalog.artifact('raw_dir', vid)}/{info['video_file']}") as f:
            assert f.read() == mp4
        with io.open_file(f"{catalog.artifact('raw_dir', vid)}/{info['caption_file']}") as f:
            assert f.read() == vtt
        assert any(line.endswith(vid) for line in load_archive(catalog))
        # the next call finds it done on the root: not fetched again
        assert run_download(catalog, url=srv.url("/show/ep1.html"))["status"] == "skipped"
        assert srv.count("/media/ep1.mp4") == 1


# -- build-tv-dataset on S3 --------------------------------------------------------------
@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from emotionclip.sample import make_sample_corpus

    folder = tmp_path_factory.mktemp("s3-corpus")
    make_sample_corpus(folder, n_videos=3, duration_s=24.0)
    return folder


def _build(corpus: Path, data_root: str, **params) -> dict:
    from flows.build_tv_dataset import build_tv_dataset

    return build_tv_dataset(source="folder", folder=str(corpus), data_root=data_root, overrides=OVERRIDES, **params)


@pytest.fixture(scope="module")
def local_build(corpus, tmp_path_factory):
    """The reference: the same build on a local data root, in-process."""
    root = tmp_path_factory.mktemp("local-root")
    result = _build(corpus, str(root))
    assert result["processed"] == 3 and result["failures"] == 0, result
    manifests = _sorted(read_manifests(root / "manifests"))
    assert len(manifests) > 0
    return {"root": root, "manifests": manifests, "rejected": io.read_parquet(str(root / "manifests" / "rejected.parquet"))}


def _same_as_local(local_build, root: str) -> None:
    pd.testing.assert_frame_equal(_sorted(read_manifests(f"{root}/manifests")), local_build["manifests"])
    rejected = io.read_parquet(f"{root}/manifests/rejected.parquet")
    pd.testing.assert_frame_equal(rejected, local_build["rejected"])


@pytest.mark.slow
def test_build_on_s3_matches_the_local_build_and_reruns_cached(s3_env, corpus, local_build):
    from emotionclip.core.frame_store import FrameStore
    from emotionclip.core.video_registry import VideoRegistry

    root = s3_env.url(_prefix())
    result = _build(corpus, root)
    assert result["processed"] == 3 and result["failures"] == 0, result
    _same_as_local(local_build, root)
    catalog = load_catalog(profile="tiny", data_root=root, overrides=OVERRIDES)
    assert set(VideoRegistry(catalog).done_ids()) == {"sample_00", "sample_01", "sample_02"}
    with FrameStore(catalog.artifact("frames", "sample_00")) as store:  # random access by ranged reads
        assert len(store) > 0 and store[len(store) - 1].size == store.size
    # nothing on the local disk stands in for the root: the card and the markers are on S3
    assert io.exists(f"{root}/card/README.md")
    assert io.exists(catalog.artifact("video_dir", "sample_00") + "/.stages/clips.json")
    # a re-run finds every stage up to date from its marker on S3
    again = _build(corpus, root)
    assert again["processed"] == 3 and again["stage_runs"] == {s: 0 for s in again["stage_runs"]}, again
    _same_as_local(local_build, root)


# -- two workers, two "machines", one S3 root ------------------------------------------
@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """A real local Prefect server (SQLite, 127.0.0.1) with the project's deployments."""
    from deployments import local
    from s3server import free_ports

    home = tmp_path_factory.mktemp("s3-prefect-home")
    port = free_ports(1)[0]
    local.start_server(home, port)
    try:
        local.register(home, port)
        yield home, port
    finally:
        local.stop(home)  # the named workers too


def _batch_runs(home: Path, port: int, parent_id: str) -> list:
    """The flow runs of process-videos/batch that the build run `parent_id` started."""
    import asyncio

    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    from deployments import local

    async def main():
        async with PrefectClient(api=local.server_env(home, port)["PREFECT_API_URL"]) as client:
            # run_deployment links each child to the parent through a task run of the parent
            children = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id])))
            return [r for r in children if r.name.startswith("batch-")]

    return asyncio.run(main())


def _wait_for_workers(home: Path, port: int, names: list[str], pids: list[int], timeout: float = 300) -> None:
    """Until every worker in `names` is online in the work pool (so that the first one
    up cannot take every batch before the second asks); a worker that exits: its log."""
    import asyncio
    import time

    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.objects import WorkerStatus

    from deployments import local
    from deployments.definitions import WORK_POOL

    async def online() -> set[str]:
        async with PrefectClient(api=local.server_env(home, port)["PREFECT_API_URL"]) as client:
            return {w.name for w in await client.read_workers_for_work_pool(WORK_POOL) if w.status == WorkerStatus.ONLINE}

    deadline = time.monotonic() + timeout
    while not set(names) <= asyncio.run(online()):
        for name, pid in zip(names, pids):
            if not local._alive(pid):
                pytest.fail(f"worker {name} exited: {(home / f'worker-{name}.log').read_text(errors='replace')[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"workers {names} not online after {timeout:.0f} s")
        time.sleep(1)


@pytest.mark.slow
def test_two_workers_build_on_a_shared_s3_root(s3_env, corpus, local_build, prefect_server, tmp_path):
    """The parent run splits the 3 videos into 2 batches and submits each as a run of
    process-videos/batch; two process workers (own processes, working folders, TMPDIR
    and caches, one run at a time each) take one batch each; the parent then builds the
    manifests once, equal to the local in-process build's."""
    from deployments import local
    from deployments.definitions import OFFLINE_ENV

    home, port = prefect_server
    root = s3_env.url(_prefix())
    workers = ["machine-a", "machine-b"]
    pids = []
    for name in workers:
        machine = tmp_path / name
        (machine / "tmp").mkdir(parents=True)
        pids += [local.start_worker(home, port, name=name, cwd=machine, limit=1, env={
            **s3_env.env(), **OFFLINE_ENV, "TMPDIR": str(machine / "tmp"), "EMOTIONCLIP_CACHE": str(machine / "cache"),
            "PREFECT_HOME": str(machine / "prefect"),
            # each worker asks for work every second: the second one takes the second batch
            # while the first is busy with the first (limit 1), not after it
            "PREFECT_WORKER_QUERY_SECONDS": "1"})]
    _wait_for_workers(home, port, workers, pids)
    # The parent is a flow run on the same server, started from a third process.
    code = ("import json, sys; from flows.build_tv_dataset import build_tv_dataset; "
            "print('RESULT ' + json.dumps(build_tv_dataset(**json.loads(sys.argv[1])), default=str))")
    params = {"source": "folder", "folder": str(corpus), "data_root": root, "overrides": OVERRIDES,
              "videos_per_batch": 2, "batch_runs": "deployment"}
    (tmp_path / "parent").mkdir()
    out = subprocess.run([sys.executable, "-c", code, json.dumps(params)], cwd=tmp_path / "parent",
                         env={**local.server_env(home, port), **s3_env.env(), **OFFLINE_ENV},
                         capture_output=True, text=True, timeout=900)
    (tmp_path / "parent" / "run.log").write_text(out.stdout + out.stderr)  # kept for a look afterwards
    logs = "\n".join((home / f"worker-{w}.log").read_text(errors="replace")[-2000:] for w in workers)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:] + logs
    result = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert result["processed"] == 3 and result["failures"] == 0, result
    _same_as_local(local_build, root)

    batches = _batch_runs(home, port, result["run_id"])
    assert sorted(r.name for r in batches) == ["batch-0001-of-0002", "batch-0002-of-0002"], batches
    assert all(r.state.is_completed() for r in batches), [(r.name, r.state) for r in batches]
    # each batch ran on its own worker ("machine"): the worker that took a run labels it
    ran_on = {r.name: r.labels.get("prefect.worker.name") for r in batches}
    assert sorted(ran_on.values()) == workers, ran_on
    assert all(r.infrastructure_pid for r in batches)
