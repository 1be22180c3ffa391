"""Progress you can see: rich bars of the `emotionclip` commands (stages, training,
feature extraction) and the Prefect progress artifacts of pretrain and linear-probe.

The commands run in-process (typer's CliRunner captures stderr, which is not a
terminal): EMOTIONCLIP_PROGRESS=1 makes rich write each bar's final state there once;
without it nothing is drawn. Counts are asserted, never rates or times.
"""

from __future__ import annotations

import json
import re
import threading

import pytest
from typer.testing import CliRunner

from emotionclip.cli import app
from emotionclip.core.progress import ProgressEvent, Throttle, Tracker, follow_jsonl, track, use
from training_data import write_manifest


def _cli(*args: str):
    return CliRunner().invoke(app, list(args))


def _json(stdout: str):
    """The command's JSON summary (Ultralytics' first-use notice may print before it)."""
    return json.loads(stdout[re.search(r"^[{\[]", stdout, re.M).start():])


@pytest.fixture
def bars(monkeypatch):
    """Bars forced on, wide enough that no column is cut."""
    monkeypatch.setenv("EMOTIONCLIP_PROGRESS", "1")
    monkeypatch.setenv("COLUMNS", "200")


# -- the library hook ------------------------------------------------------------------

def test_trackers_report_counts_nesting_and_their_end():
    events: list[ProgressEvent] = []
    with use(events.append):
        with track("outer", 3, "videos") as outer:
            with track("inner", None, "frames", min_interval_s=0) as inner:
                inner.advance(5)
            outer.advance(3, loss=1.5)
        with pytest.raises(RuntimeError):
            with track("broken", 10, "frames", min_interval_s=0) as b:
                b.advance(4)
                raise RuntimeError("decode failed")
    last = {e.description: e for e in events if e.finished}
    assert (last["outer"].completed, last["outer"].total, last["outer"].depth) == (3, 3, 0)
    assert last["outer"].info == {"loss": 1.5}
    assert (last["inner"].completed, last["inner"].total, last["inner"].depth) == (5, 5, 1)  # total learnt at the end
    assert (last["broken"].completed, last["broken"].total, last["broken"].fraction) == (4, 10, 0.4)  # not 100 %
    n = len(events)
    track("no hook", 5).advance()  # outside `use`: nothing reported, nothing raised
    assert len(events) == n

    def boom(event):
        raise OSError("display gone")

    t = Tracker(boom, "work", 2)  # a failing hook is dropped, the work goes on
    t.advance(2)
    t.close()
    assert t.hook is None and t.completed == 2


def test_throttle_passes_first_and_last_event_and_drops_nested():
    seen: list[ProgressEvent] = []
    now = [0.0]
    hook = Throttle(seen.append, interval_s=5.0, max_depth=0, clock=lambda: now[0])
    t = Tracker(hook, "train", 100, "steps", min_interval_s=0)
    for step in range(1, 101):
        now[0] = step * 0.1  # 10 s for 100 steps: about one event every 5 s passes
        t.update(completed=step)
    t.close()
    assert [e.completed for e in seen if e.description == "train"] == [0, 50, 100, 100]
    with use(hook), track("outer", 1):
        track("nested", 1).close()
    assert not any(e.description == "nested" for e in seen)


def test_follow_jsonl_reads_whole_lines_of_another_writer(tmp_path):
    """Under torchrun the bar follows rank 0's metrics file; a line being written is not read."""
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1, "loss": 3.0}) + "\n")
    events: list[ProgressEvent] = []
    with follow_jsonl(path, Tracker(events.append, "train", 4, "steps", min_interval_s=0),
                      info_keys=("loss",), interval_s=0.01):
        with open(path, "a") as f:
            f.write(json.dumps({"step": 3, "loss": 2.0}) + "\n" + '{"step": 4, "lo')  # the last one half written
    assert events[-1].finished and events[-1].completed == 3 and events[-1].info["loss"] == 2.0


# -- the commands -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from emotionclip.sample import make_sample_corpus

    folder = tmp_path_factory.mktemp("progress-corpus")
    make_sample_corpus(folder, n_videos=1, duration_s=2.0)
    return folder


@pytest.mark.slow
def test_stage_commands_show_import_frames_and_detection_bars(bars, corpus, tmp_path, models_dir, monkeypatch):
    common = ["--profile", "tiny", "--data-root", str(tmp_path / "data"), "--set", f"models_dir={models_dir}",
              "--set", "stages.humans.device=cpu", "--set", "stages.humans.imgsz=64"]  # a small input: fast
    res = _cli("stage", "download", "--folder", str(corpus), *common)
    assert res.exit_code == 0, res.output
    assert _json(res.stdout)["imported"] == ["sample_00"]  # stdout stays the JSON summary
    assert re.search(r"import\s.*\s1/1 videos", res.stderr), res.stderr

    res = _cli("stage", "frames", "-v", "sample_00", *common)
    assert res.exit_code == 0, res.output
    n = _json(res.stdout)["n_frames"]
    assert n > 0 and re.search(rf"frames sample_00\s.*\s{n}/{n} frames\s+\S+ frames/s", res.stderr), res.stderr

    res = _cli("stage", "humans", "-v", "sample_00", *common)
    assert res.exit_code == 0, res.output
    assert _json(res.stdout)["n_frames"] == n
    assert re.search(rf"detect\s.*\s{n}/{n} frames", res.stderr), res.stderr

    monkeypatch.delenv("EMOTIONCLIP_PROGRESS")  # default: not a terminal, so no bars in the logs
    res = _cli("stage", "frames", "-v", "sample_00", "--force", *common)
    assert res.exit_code == 0, res.output
    assert "frames sample_00" not in res.stderr and "frames/s" not in res.stderr


@pytest.mark.slow
def test_download_command_shows_bytes(bars, tmp_path):
    """Real yt-dlp from a loopback page: the bar counts the bytes of the video and its captions."""
    from rich import filesize

    from emotionclip.sample import make_test_video
    from loopback import LoopbackServer, Route

    mp4 = make_test_video(tmp_path / "v.mp4", duration_s=1.0, width=320, height=240, fps=10).read_bytes()
    vtt = b"WEBVTT\n\n00:00:00.000 --> 00:00:00.800\nhello there\n"
    page = (b'<!doctype html><html><head><title>Episode 1</title></head><body><video controls>'
            b'<source src="/media/ep1.mp4" type="video/mp4"><track kind="captions" srclang="en" label="English" '
            b'src="/media/ep1.en.vtt"></video></body></html>')
    routes = {"/show/ep1.html": Route(page, "text/html"), "/media/ep1.mp4": Route(mp4, "video/mp4"),
              "/media/ep1.en.vtt": Route(vtt, "text/vtt")}
    with LoopbackServer(routes) as srv:
        res = _cli("stage", "download", "--url", srv.url("/show/ep1.html"), "--data-root", str(tmp_path / "data"),
                   "--set", "stages.download.sleep_requests_s=0", "--set", "stages.download.sleep_interval_s=0.001",
                   "--set", "stages.download.max_sleep_interval_s=0.01")
    assert res.exit_code == 0, res.output
    summary = _json(res.stdout)
    assert summary["bytes"] == len(mp4)
    size = filesize.decimal(len(mp4) + len(vtt))  # both files, summed
    assert re.search(rf"download {summary['video_id']}\s.*\s{size}/{size}\s", res.stderr), res.stderr


@pytest.mark.slow
def test_train_command_shows_steps_and_the_tensorboard_command(bars, clip_corpus, tmp_path):
    root, _, df = clip_corpus
    manifest = write_manifest(df.groupby("video_id").head(2).reset_index(drop=True),
                              tmp_path / "manifests" / "clips-00000.parquet")
    out = tmp_path / "run"
    res = _cli("train", "--manifests", str(manifest.parent), "--out", str(out), "--profile", "tiny",
               "--data-root", str(root), "--set", "batch_size=2", "--set", "num_workers=0",
               "--set", "num_frames=2", "--set", "epochs=1")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["step"] == 2
    assert f"tensorboard --logdir {out / 'tensorboard'}" in res.stderr
    assert re.search(r"train\s.*\s2/2 steps\s+\S+ steps/s.*epoch 0 loss \S+ \S+ clips/s", res.stderr), res.stderr


@pytest.mark.slow
def test_eval_run_shows_feature_extraction_per_split(bars, tmp_path):
    from emotionclip.evaluation import sample as L

    root = L.make_emotic_preprocessed(tmp_path / "emotic", n=4, missing="val")
    res = _cli("eval", "run", "emotic", "--root", str(root), "--out", str(tmp_path / "out"), "--profile", "tiny",
               "--no-detect", "--c-mode", "preset")
    assert res.exit_code == 0, res.output
    features = _json(res.stdout)["features"]
    for split, stats in features.items():
        n = stats["computed"] + stats["cached"] + len(stats["skipped"])  # a missing image counts as done
        assert n > 0 and re.search(rf"features emotic/{split}\s.*\s{n}/{n} samples", res.stderr), res.stderr
    assert len(features["val"]["skipped"]) == 1


# -- the flows' progress artifacts ----------------------------------------------------------

@pytest.mark.slow
def test_pretrain_flow_progress_artifact_reaches_100_with_step_info(clip_corpus, tmp_path):
    from prefect.artifacts import Artifact

    from flows.pretrain import pretrain

    root, _, df = clip_corpus
    manifest = write_manifest(df.groupby("video_id").head(2).reset_index(drop=True),
                              tmp_path / "manifests" / "clips-00000.parquet")
    result = pretrain(manifests=str(manifest.parent), out_dir=str(tmp_path / "run"), profile="tiny",
                      data_root=str(root), overrides={"batch_size": 2, "num_workers": 0, "num_frames": 2,
                                                      "epochs": 1})
    assert result["step"] == 2
    art = Artifact.get("pretrain-progress")
    assert art is not None and art.type == "progress" and float(art.data) == 100.0
    assert re.match(r"pretrain: step 2/2 \(epoch 0\) · loss \d.* · done in ", art.description), art.description


@pytest.mark.slow
def test_linear_probe_flow_has_one_progress_artifact_per_dataset(tmp_path):
    from prefect.artifacts import Artifact

    from emotionclip.evaluation import sample as L
    from flows.linear_probe import linear_probe

    roots = {"emotic": str(L.make_emotic_preprocessed(tmp_path / "emotic", n=4, missing=None))}
    res = linear_probe(roots, str(tmp_path / "out"), profile="tiny", detect=False, c_mode="preset")
    assert res["rows"] == 4
    art = Artifact.get("linear-probe-progress-emotic")
    assert art is not None and art.type == "progress" and float(art.data) == 100.0
    assert art.description.startswith("emotic: done in ") and "(4 result rows)" in art.description


def test_progress_artifact_survives_an_unreachable_server():
    """A server that is away: every call fails, is counted and logged (once), never raised."""
    from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    from tasks.progress import StepProgress

    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api", PREFECT_CLIENT_MAX_RETRIES: 0}):
        hook = StepProgress("pretrain-progress", "pretrain", interval_s=600)  # forced updates only: 3 calls
        t = Tracker(hook, "train", 2, "steps", min_interval_s=0)
        t.update(completed=1, loss=2.0)
        t.update(completed=2)
        t.close()
    assert hook.artifact.artifact_id is None and hook.artifact.failures == 3  # create; first and last update retry it
    assert hook.artifact.percent == 100.0 and hook.artifact.description.startswith("pretrain: step 2/2 · loss 2")


def test_rich_bars_in_threads_keep_one_bar_per_tracker():
    """Feature tasks of several splits report at once: each tracker is its own bar."""
    import io

    from rich.console import Console

    from emotionclip.cli._common import progress_display

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=False, width=200)

    def work(name: str) -> None:
        with use(hook_box[0]), track(name, 50, "samples", min_interval_s=0) as t:
            for _ in range(50):
                t.advance()

    hook_box: list = []
    with progress_display(console=console, mode="on"):
        from emotionclip.core.progress import current

        hook_box.append(current())
        threads = [threading.Thread(target=work, args=(f"features x/{s}",)) for s in ("train", "val", "test")]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    out = buf.getvalue()
    for s in ("train", "val", "test"):
        assert re.search(rf"features x/{s}\s.*\s50/50 samples", out), out
