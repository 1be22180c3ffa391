"""The dataset grows run after run: the video registry (emotionclip.core.video_registry)
records every video and run, the manifests hold every done video, a run with nothing
new changes nothing, exclusions take videos out at the next run, transient failures
are retried by later runs and permanent ones are not, concurrent runs keep the
registry consistent, an older data root is adopted, `target_videos` stops growth,
and `emotionclip dataset status|list|remove` show and change it.

The flow tests run the real build-tv-dataset flow (tiny models, a temporary Prefect
server) on generated sample videos; the URL test drives real yt-dlp against a
loopback HTTP server."""

from __future__ import annotations

import json
import multiprocessing
import shutil
import threading
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from emotionclip.core.catalog import load_catalog
from emotionclip.core.ids import InvalidVideoId
from emotionclip.core.manifest_store import manifest_info, read_manifests
from emotionclip.core.schemas import RUNS, VIDEOS, SchemaError
from emotionclip.core.video_registry import VideoRegistry, url_key
from loopback import LoopbackServer, Route

# Random tiny models score every sentence about 1/7 neutral and the sample sentences
# are short: the paper's filter would keep nothing.
GOOD = {"stages.filter.max_neutral": 1.0, "stages.filter.min_duration_s": 0.0, "stages.filter.min_frames": 1,
        "stages.humans.imgsz": 320}


# ---------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Four short sample videos with captions, made once; tests copy the ones they need."""
    from emotionclip.sample import make_sample_corpus

    folder = tmp_path_factory.mktemp("growth-corpus")
    make_sample_corpus(folder, n_videos=4, duration_s=8.0)
    return folder


def videos(corpus: Path, dest: Path, *stems: str) -> Path:
    """A folder holding the corpus videos `stems` (video and caption files)."""
    dest.mkdir(parents=True, exist_ok=True)
    for stem in stems:
        for p in corpus.glob(f"{stem}.*"):
            shutil.copy(p, dest / p.name)
    return dest


def build(root: Path, folder: Path, **kwargs):
    from flows.build_tv_dataset import build_tv_dataset

    overrides = {**GOOD, **kwargs.pop("overrides", {})}
    return build_tv_dataset(source=kwargs.pop("source", "folder"), folder=str(folder) if folder else None,
                            data_root=str(root), overrides=overrides, **kwargs)


def catalog(root: Path, **overrides):
    return load_catalog(profile="tiny", data_root=str(root), overrides={**GOOD, **overrides})


def manifest_videos(root: Path) -> list[str]:
    return sorted(read_manifests(root / "manifests")["video_id"].unique())


def shard_bytes(root: Path) -> list[bytes]:
    """The current generation's shards, as bytes, in order."""
    info = manifest_info(root / "manifests")
    return [(root / "manifests" / s["path"]).read_bytes() for s in info["shards"]]


def model_calls() -> int:
    """Calls of the per-process model loaders (cache hits included): unchanged means
    no stage even asked for a model."""
    from emotionclip.zoo.detector import load_detector
    from emotionclip.zoo.loaders import load_emotion_model, load_punctuation_model

    return sum(f.cache_info().hits + f.cache_info().misses
               for f in (load_punctuation_model, load_emotion_model, load_detector))


def cli(*args: str):
    from emotionclip.cli import app

    return CliRunner().invoke(app, list(args))


def rows(root: Path) -> pd.DataFrame:
    return VideoRegistry(catalog(root)).read().set_index("video_id")


# ---------------------------------------------------------------- the registry itself
def test_register_mark_and_the_skip_and_retry_sets(tmp_path):
    reg = VideoRegistry(catalog(tmp_path))
    assert reg.read().columns.tolist() == VIDEOS.names and len(reg.read()) == 0
    assert reg.register([{"video_id": "a", "title": "A", "source": "youtube", "query": "TV series"},
                         {"video_id": "b", "source": "url", "url": "http://x/b"}], "run-1") == ["a", "b"]
    assert reg.register([{"video_id": "a", "title": "changed"}, {"video_id": "c"}], "run-2") == ["c"]
    reg.mark_done("a", "run-1", {"words": "done", "clips": "done"})
    reg.mark_failed("b", "download", "HTTP Error 503", True, "run-1")
    reg.mark_failed("c", "words", "no words", False, "run-2")
    df = reg.read().set_index("video_id")
    assert (df.loc["a", "title"], df.loc["a", "added_by_run"], df.loc["a", "query"]) == ("A", "run-1", "TV series")
    assert json.loads(df.loc["a", "stages"]) == {"words": "done", "clips": "done"}
    assert (df.loc["b", "status"], df.loc["b", "attempts"], df.loc["b", "transient"]) == ("failed", 1, True)
    assert reg.done_ids() == ["a"]
    assert reg.skip_ids(max_attempts=3) == {"a", "c"}  # done, permanent failure
    assert reg.retry_ids(max_attempts=3) == ["b"]  # transient, 1 of 3 attempts
    assert reg.skip_ids(max_attempts=3, retry_failed=True) == {"a"}
    assert reg.retry_ids(max_attempts=3, retry_failed=True) == ["b", "c"]

    for _ in range(2):  # the third transient failure uses up the attempts
        reg.mark_failed("b", "download", "HTTP Error 503", True, "run-3")
    assert reg.read().set_index("video_id").loc["b", "attempts"] == 3
    assert reg.retry_ids(max_attempts=3) == [] and "b" in reg.skip_ids(max_attempts=3)
    reg.exclude("a", "excluded id (test)")
    assert reg.done_ids() == [] and "a" in reg.skip_ids(max_attempts=3)
    reg.mark_done("a", "run-4", {"clips": "done"})  # a run's outcome does not undo an exclusion
    assert reg.read().set_index("video_id").loc["a", "status"] == "excluded"
    assert reg.counts() == {"pending": 0, "done": 0, "failed": 2, "excluded": 1, "clips": 0,
                            "failed_reasons": {"download (transient)": 1, "words (permanent)": 1},
                            "excluded_reasons": {"excluded id (test)": 1}}


def test_the_exclusion_rules_are_the_source_of_truth(tmp_path):
    reg = VideoRegistry(catalog(tmp_path))
    reg.register([{"video_id": "a", "title": "Friends S01E01"}, {"video_id": "b", "title": "Other"},
                  {"video_id": "c", "title": "Third"}], "run-1")
    rules = {"b": "excluded id (hand)"}
    with reg.batch() as b:
        # the catalog's default title pattern excludes Friends (MELD is cut from it)
        assert b.apply_exclusions(lambda v, t: rules.get(v) or ("title matches" if "Friends" in t else None)) \
            == (["a", "b"], [])
    df = reg.read().set_index("video_id")
    assert df["status"].to_dict() == {"a": "excluded", "b": "excluded", "c": "pending"}
    assert df.loc["b", "excluded_reason"] == "excluded id (hand)"
    del rules["b"]
    with reg.batch() as b:
        assert b.apply_exclusions(lambda v, t: rules.get(v) or ("title matches" if "Friends" in t else None)) \
            == ([], ["b"])
    df = reg.read().set_index("video_id")
    assert (df.loc["b", "status"], df.loc["b", "excluded_reason"]) == ("pending", "")


def test_a_batch_writes_once_only_when_something_changed_and_not_on_error(tmp_path):
    reg = VideoRegistry(catalog(tmp_path))
    ids = [f"v{i:04d}" for i in range(3613)]
    with reg.batch() as b:  # the paper's 3,613 videos: one write
        assert b.register([{"video_id": v, "source": "youtube"} for v in ids], "run-1") == ids
        for v in ids:
            b.mark_done(v, "run-1", {"clips": "done"})
    path = Path(reg.path)
    stat = path.stat()
    assert reg.done_ids() == ids
    with reg.batch() as b:  # the same again: nothing changed, nothing written
        for v in ids:
            b.mark_done(v, "run-2", {"clips": "done"})
    assert path.stat().st_ino == stat.st_ino and path.stat().st_mtime_ns == stat.st_mtime_ns
    with pytest.raises(RuntimeError, match="boom"):
        with reg.batch() as b:
            b.mark_failed("v0000", "words", "x", False, "run-3")
            raise RuntimeError("boom")
    assert reg.read().set_index("video_id").loc["v0000", "status"] == "done"
    with reg.update() as df:  # the DataFrame form
        df.loc["v0001", "title"] = "Episode 1"
    assert reg.read().set_index("video_id").loc["v0001", "title"] == "Episode 1"


def test_bad_ids_and_a_damaged_registry_are_one_clear_error(tmp_path):
    reg = VideoRegistry(catalog(tmp_path))
    with pytest.raises(InvalidVideoId, match=r"invalid video id '\.\./x'"):
        reg.register([{"video_id": "../x"}], "run-1")
    with pytest.raises(ValueError, match="video a: source 'ftp'"):
        reg.register([{"video_id": "a", "source": "ftp"}], "run-1")
    Path(reg.path).parent.mkdir(parents=True, exist_ok=True)
    Path(reg.path).write_bytes(b"not parquet")
    with pytest.raises(SchemaError, match=r"videos\.parquet: not a readable Parquet file"):
        reg.read()
    bad = cli("dataset", "list", "--data-root", str(tmp_path))
    assert bad.exit_code == 2 and "videos.parquet" in bad.stderr and bad.stderr.count("\n") == 1


def _hammer(root: str, worker: int, n: int) -> None:
    reg = VideoRegistry(load_catalog(profile="tiny", data_root=root))
    for i in range(n):
        with reg.batch() as b:
            b.register([{"video_id": f"w{worker}-{i}"}], f"run-{worker}")
            b.mark_failed("shared", "download", f"from {worker}", True, f"run-{worker}")


def test_concurrent_processes_lose_no_update(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(str(tmp_path), w, 15)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0] * 4
    df = VideoRegistry(catalog(tmp_path)).read().set_index("video_id")
    assert len(df) == 4 * 15 + 1
    assert df.loc["shared", "attempts"] == 4 * 15  # every increment kept: no lost read-modify-write


def test_runs_table(tmp_path):
    reg = VideoRegistry(catalog(tmp_path))
    assert reg.runs().columns.tolist() == RUNS.names and len(reg.runs()) == 0
    reg.append_run({"run_id": "r1", "source": "folder", "videos_added": 2, "clips_total": 9})
    reg.append_run({"run_id": "r2", "source": "folder", "videos_added": 1, "clips_added": 4, "clips_total": 13})
    runs = reg.runs()
    assert runs["run_id"].tolist() == ["r1", "r2"] and runs["clips_total"].tolist() == [9, 13]
    assert runs["videos_done"].tolist() == [0, 0]  # missing counts are 0


# ---------------------------------------------------------------- the flow growing one dataset
@pytest.mark.slow
def test_two_runs_grow_one_dataset_and_a_third_with_nothing_new_changes_nothing(corpus, tmp_path):
    root = tmp_path / "data"
    first = build(root, videos(corpus, tmp_path / "first", "sample_00", "sample_01"))
    assert (first["videos_added"], first["videos_done"]) == (2, 2)
    second = build(root, videos(corpus, tmp_path / "second", "sample_02"))
    assert (second["videos_added"], second["videos_done"]) == (1, 3)
    assert manifest_videos(root) == ["sample_00", "sample_01", "sample_02"]  # both runs' videos
    df = rows(root)
    assert df.loc["sample_00", "added_by_run"] == first["run_id"] != df.loc["sample_02", "added_by_run"]
    assert set(df["status"]) == {"done"} and set(df["source"]) == {"local"}
    kept = read_manifests(root / "manifests")["video_id"].value_counts()
    assert df["n_clips"].to_dict() == kept.to_dict()  # the registry knows each video's kept clips
    runs = VideoRegistry(catalog(root)).runs()
    assert runs["videos_added"].tolist() == [2, 1] and runs["videos_done"].tolist() == [2, 3]
    assert runs["clips_total"].iloc[-1] == len(read_manifests(root / "manifests")) == runs["clips_added"].sum()

    shards, calls = shard_bytes(root), model_calls()
    third = build(root, tmp_path / "second")
    assert shard_bytes(root) == shards  # byte-identical
    assert third["processed"] == 1 and set(third["stage_runs"].values()) == {0}  # every stage up to date
    assert model_calls() == calls  # no model loaded, or even asked for
    assert (third["videos_added"], third["clips_added"], third["videos_done"]) == (0, 0, 3)
    assert len(VideoRegistry(catalog(root)).runs()) == 3


@pytest.mark.slow
def test_excluded_by_id_and_by_title_leave_at_the_next_run(corpus, tmp_path):
    root = tmp_path / "data"
    folder = videos(corpus, tmp_path / "in", "sample_00", "sample_01", "sample_02")
    build(root, folder)
    assert manifest_videos(root) == ["sample_00", "sample_01", "sample_02"]

    out = cli("dataset", "remove", "sample_00", "--data-root", str(root))  # by id, recorded in the file
    assert out.exit_code == 0, out.output
    exclusions = root / "dataset" / "exclusions.yaml"
    rules = yaml.safe_load(exclusions.read_text())
    assert rules["sources"][0]["ids"] == ["sample_00"]
    exclusions.write_text(yaml.safe_dump({**rules, "titles": ["sample_01"]}))  # by title, by hand
    result = build(root, folder, force_manifests=True)  # two of three videos go: past the shrink guard
    assert manifest_videos(root) == ["sample_02"]
    df = rows(root)
    assert df.loc["sample_00", "status"] == df.loc["sample_01", "status"] == "excluded"
    assert "sample_01" in df.loc["sample_01", "excluded_reason"]
    assert result["videos_excluded"] == 2 and result["videos_done"] == 1
    assert sum(result["excluded_reasons"].values()) == 2
    assert result["stage_runs"]["words"] == 0 and result["processed"] == 1  # the excluded are not processed

    # The rules are the source of truth: a deleted rule brings its video back at the next run.
    exclusions.write_text(yaml.safe_dump({**rules, "titles": []}))
    back = build(root, folder)
    assert manifest_videos(root) == ["sample_01", "sample_02"]
    assert rows(root).loc["sample_01", "status"] == "done" and back["videos_added"] == 1
    assert set(back["stage_runs"].values()) == {0}  # its stages were still up to date


VTT = (b"WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nwell this is a wonderful day my friend\n\n"
       b"00:00:01.500 --> 00:00:02.900\nand i cannot believe it happened\n")


@pytest.mark.slow
def test_a_transient_download_failure_is_retried_by_the_next_run_and_a_permanent_one_is_not(tmp_path):
    from emotionclip.sample import make_test_video

    mp4 = make_test_video(tmp_path / "v.mp4", duration_s=3.0, width=320, height=240, fps=10).read_bytes()
    page = (b'<!doctype html><html><head><title>Episode 1</title></head><body><video controls>'
            b'<source src="/media/ep1.mp4" type="video/mp4">'
            b'<track kind="captions" srclang="en" label="English" src="/media/ep1.en.vtt"></video></body></html>')
    routes = {"/show/ep1.html": Route(page, "text/html", fail=[503]),  # throttled once, then fine
              "/media/ep1.mp4": Route(mp4, "video/mp4"), "/media/ep1.en.vtt": Route(VTT, "text/vtt")}
    root = tmp_path / "data"
    # No retries inside a run (the next run is the retry) and no yt-dlp sleeps: milliseconds, not minutes.
    fast = {"stages.download": {"task_retries": 0, "retries": 0, "sleep_requests_s": 0, "sleep_interval_s": 0,
                                "max_sleep_interval_s": 0}}
    with LoopbackServer(routes) as srv:
        transient, gone = srv.url("/show/ep1.html"), srv.url("/show/gone.html")  # gone: 404
        first = build(root, None, source="urls", urls=[transient, gone], overrides=fast)
        assert first["failures"] == 2 and first["videos_failed"] == 2
        df = rows(root)
        assert (df.loc[url_key(transient), "transient"], df.loc[url_key(gone), "transient"]) == (True, False)
        assert df.loc[url_key(transient), "attempts"] == 1 and df.loc[url_key(gone), "url"] == gone

        # The next run gets the permanent failure's URL again and nothing else.
        second = build(root, None, source="urls", urls=[gone], overrides=fast)
        assert srv.statuses("/show/ep1.html") == [503, 200]  # retried from the registry
        assert srv.count("/show/gone.html") == 1  # not requested again
        # retry_failed: the permanent failure too (and it fails again: a second attempt).
        third = build(root, None, source="urls", urls=[gone], overrides=fast, retry_failed=True)
        assert srv.count("/show/gone.html") == 2 and srv.statuses("/show/ep1.html") == [503, 200]
    assert third["failures"] == 1 and third["videos_done"] == 1
    assert second["retried"] == 1 and second["videos_added"] == 1
    df = rows(root)
    done = df[df["status"] == "done"]
    assert len(done) == 1 and done["url"].iloc[0] == transient and done["source"].iloc[0] == "url"
    assert url_key(transient) not in df.index  # the stand-in row gave way to the real id
    assert df.loc[url_key(gone), "status"] == "failed" and df.loc[url_key(gone), "attempts"] == 2
    assert manifest_videos(root) == [done.index[0]]
    assert second["failed_reasons"] == {"download (permanent)": 1}


@pytest.mark.slow
def test_two_concurrent_runs_on_one_data_root_keep_the_registry_consistent(corpus, tmp_path):
    root = tmp_path / "data"
    folders = [videos(corpus, tmp_path / "a", "sample_00", "sample_01"), videos(corpus, tmp_path / "b", "sample_02")]
    results, errors = {}, []

    def run(i: int) -> None:
        try:
            results[i] = build(root, folders[i])
        except BaseException as e:  # reported below
            errors.append(e)

    # Prefect starts its temporary server on a process's first flow run; two threads
    # racing to start it would fail, so it is started here first.
    from prefect import flow

    flow(name="warm-up")(lambda: None)()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    df = rows(root)
    assert sorted(df.index) == ["sample_00", "sample_01", "sample_02"] and set(df["status"]) == {"done"}
    assert df.loc["sample_00", "added_by_run"] == results[0]["run_id"]
    assert df.loc["sample_02", "added_by_run"] == results[1]["run_id"]
    # Whichever built last saw both runs' videos.
    assert manifest_videos(root) == ["sample_00", "sample_01", "sample_02"]
    assert sorted(VideoRegistry(catalog(root)).runs()["run_id"]) == sorted(r["run_id"] for r in results.values())


@pytest.mark.slow
def test_a_data_root_built_before_the_registry_is_adopted(corpus, tmp_path):
    from emotionclip.stages.download import import_local_folder
    from emotionclip.stages.manifests import build_manifests
    from emotionclip.stages.registry import done_video_ids
    from emotionclip.stages.chain import run_video

    root = tmp_path / "data"
    cat = catalog(root)
    import_local_folder(cat, videos(corpus, tmp_path / "old", "sample_00"))
    run_video(cat, "sample_00")
    build_manifests(cat, done_video_ids(cat))  # the way it was done before the registry
    assert not (root / "dataset" / "videos.parquet").exists()

    result = build(root, videos(corpus, tmp_path / "new", "sample_01"))
    assert result["adopted"] == 1 and result["videos_added"] == 1
    df = rows(root)
    assert df.loc["sample_00", "added_by_run"] == "adopted" and df.loc["sample_00", "status"] == "done"
    assert set(json.loads(df.loc["sample_00", "stages"]).values()) == {"done"}
    assert manifest_videos(root) == ["sample_00", "sample_01"]


@pytest.mark.slow
def test_target_videos_stops_growth(corpus, tmp_path):
    root = tmp_path / "data"
    folder = videos(corpus, tmp_path / "in", "sample_00", "sample_01")
    first = build(root, folder, target_videos=1)
    assert first["videos_done"] == 1 and first["videos_pending"] == 1 and first["target_reached"]
    pointer = (root / "manifests" / "_manifest.json").read_bytes()
    second = build(root, folder, target_videos=1)
    assert second["target_reached"] and second["processed"] == 0 and second["videos_added"] == 0
    assert (root / "manifests" / "_manifest.json").read_bytes() == pointer  # nothing rebuilt
    assert len(VideoRegistry(catalog(root)).runs()) == 2  # but reported
    third = build(root, folder, target_videos=2)
    assert third["videos_done"] == 2 and manifest_videos(root) == ["sample_00", "sample_01"]


# ---------------------------------------------------------------- emotionclip dataset ...
def test_dataset_commands_status_list_remove_purge(corpus, tmp_path):
    from emotionclip.stages.download import import_local_folder
    from emotionclip.stages.registry import run_stage

    root = tmp_path / "data"
    cat = catalog(root)
    import_local_folder(cat, videos(corpus, tmp_path / "in", "sample_00", "sample_01"))
    run_stage(cat, "frames", "sample_00")
    reg = VideoRegistry(cat)
    with reg.batch() as b:
        b.register([{"video_id": "sample_00", "source": "local"}, {"video_id": "sample_01", "source": "local"}],
                   "run-1")
        b.mark_done("sample_00", "run-1", {"frames": "done"})
        b.mark_failed("sample_01", "words", "[words] video sample_01: no captions", False, "run-1")
        b.set_clips({"sample_00": 7})
    reg.append_run({"run_id": "run-1", "started": "2026-01-01T00:00:00+00:00", "source": "folder",
                    "videos_added": 1, "videos_done": 1, "videos_failed": 1, "clips_added": 7, "clips_total": 7})
    where = ["--data-root", str(root)]

    out = cli("dataset", "status", "--json", *where)
    assert out.exit_code == 0, out.output
    status = json.loads(out.stdout)
    assert {k: status["counts"][k] for k in ("done", "failed", "clips")} == {"done": 1, "failed": 1, "clips": 7}
    assert status["counts"]["failed_reasons"] == {"words (permanent)": 1}
    assert status["per_run"] == [{"run_id": "run-1", "started": "2026-01-01T00:00:00+00:00", "videos": 2,
                                  "done": 1, "clips": 7}]
    assert [r["run_id"] for r in status["runs"]] == ["run-1"]
    tables = cli("dataset", "status", *where)
    assert tables.exit_code == 0 and "words (permanent): 1" in tables.stdout and "run-1" in tables.stdout

    failed = json.loads(cli("dataset", "list", "--status", "failed", "--json", *where).stdout)
    assert [(r["video_id"], r["failed_stage"], r["attempts"]) for r in failed] == [("sample_01", "words", 1)]
    listed = cli("dataset", "list", *where)
    assert listed.exit_code == 0 and "sample_00" in listed.stdout and "no captions" in listed.stdout

    video_dir = root / "videos" / "sample_00"
    assert (video_dir / "raw").is_dir() and (video_dir / "frames.zip").is_file()
    out = cli("dataset", "remove", "sample_00", "--purge", *where)
    assert out.exit_code == 0, out.output
    assert sorted(Path(p).name for p in json.loads(out.stdout)["purged"]) == ["frames.zip", "raw"]
    assert not (video_dir / "raw").exists() and not (video_dir / "frames.zip").exists()
    assert (video_dir / "info.json").exists()  # the row and the small files stay
    excluded = json.loads(cli("dataset", "list", "--status", "excluded", "--json", *where).stdout)
    assert [r["video_id"] for r in excluded] == ["sample_00"]
    from emotionclip.core.exclusions import load_exclusions

    assert load_exclusions(cat).reason("sample_00", None) is not None
    assert "sample_00" in reg.skip_ids(max_attempts=3) and reg.done_ids() == []

    for args, message in [(("remove", "nope"), "video nope is not in the registry"),
                          (("remove", "../x"), "invalid video id"),
                          (("list", "--status", "lost"), "--status 'lost': choose one of")]:
        bad = cli("dataset", *args, *where)
        assert bad.exit_code == 2 and message in bad.stderr and bad.stderr.count("\n") == 1, bad.output


def test_dataset_status_adopts_an_older_data_root(corpus, tmp_path):
    from emotionclip.stages.download import import_local_folder

    root = tmp_path / "data"
    import_local_folder(catalog(root), videos(corpus, tmp_path / "in", "sample_00", "sample_01"))
    out = cli("dataset", "status", "--json", "--data-root", str(root))
    assert out.exit_code == 0, out.output
    status = json.loads(out.stdout)
    assert status["counts"]["pending"] == 2  # imported, never processed
    assert status["per_run"][0]["run_id"] == "adopted" and status["per_run"][0]["videos"] == 2
    assert (root / "dataset" / "videos.parquet").exists()


def test_per_video_failures_are_permanent_unless_clearly_transient():
    import errno

    from emotionclip.core.errors import StageError
    from emotionclip.stages.download import is_transient_error as is_transient_stage_failure  # the one classifier

    def wrapped(cause: BaseException) -> StageError:
        try:
            try:
                raise cause
            except BaseException as e:
                raise StageError("sentences", "v1", f"{type(e).__name__}: {e}") from e
        except StageError as err:
            return err

    assert is_transient_stage_failure(wrapped(ConnectionResetError("reset by peer")))
    assert is_transient_stage_failure(wrapped(OSError(errno.ENOSPC, "No space left on device")))
    assert is_transient_stage_failure(wrapped(MemoryError()))
    assert not is_transient_stage_failure(wrapped(ValueError("no sentences in the captions")))
    assert not is_transient_stage_failure(wrapped(FileNotFoundError(errno.ENOENT, "words.parquet")))
    assert not is_transient_stage_failure(StageError("words", "v1", "not downloaded yet"))
