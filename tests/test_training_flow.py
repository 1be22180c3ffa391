"""The `pretrain` Prefect flow on the tiny model (a temporary Prefect server): the run,
the artifacts a user reads (config, loss curve refreshed while it trains, probe table,
epochs, checkpoint), train_config.json, and a failure with its reason."""

from __future__ import annotations

import base64
import json
import threading
import time

import pytest

from emotionclip.training.metrics import read_jsonl
from training_data import write_manifest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus(clip_corpus, tmp_path_factory):
    root, _, df = clip_corpus
    df = df.groupby("video_id").head(2).reset_index(drop=True)  # 2 clips of each video
    manifest = write_manifest(df, tmp_path_factory.mktemp("flow") / "manifests" / "clips-00000.parquet")
    return root, manifest, df


SMALL = {"batch_size": 2, "num_workers": 0, "num_frames": 2, "epochs": 1, "log_every_steps": 1}


def _png_of(markdown: str) -> bytes:
    """The PNG embedded in a markdown artifact as a data URI."""
    prefix = "(data:image/png;base64,"
    start = markdown.index(prefix) + len(prefix)
    return base64.b64decode(markdown[start:markdown.index(")", start)])


def test_pretrain_flow_trains_reports_and_fails_with_reason(corpus, tmp_path):
    from prefect.artifacts import Artifact

    from emotionclip.evaluation import sample as L
    from emotionclip.training.config import read_config
    from flows.pretrain import pretrain

    root, manifest, df = corpus
    out = tmp_path / "run"
    # the epoch-end probe on a miniature BoLD (no detector): the probe table
    bold = L.make_bold(tmp_path / "bold", n_train=6, n_val=4)
    probe = {"probe_dataset": "bold", "probe_root": str(bold), "probe_detect": False, "probe_batch_size": 4}
    result = pretrain(manifests=str(manifest.parent), out_dir=str(out), profile="tiny", data_root=str(root),
                      ablation="text-frozen", overrides={**SMALL, **probe})
    assert result["clips"] == 4 and result["step"] == 2 and result["checkpoint"].endswith(".pt")
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2]
    # a run in this one process writes its config like a torchrun one
    config = read_config(out / "train_config.json")
    assert (config.ablation, config.freeze_text, config.batch_size, config.warmup_steps) == ("text-frozen", True, 2, 0)
    table = Artifact.get("pretrain-epochs")
    assert table is not None and '"epoch": 0' in table.data.replace("'", '"')
    report = Artifact.get("pretrain-checkpoint")
    assert report is not None and "ablation: `text-frozen`" in report.data

    # every hyper-parameter, the preset and the ablation
    conf = Artifact.get("pretrain-config")
    assert conf is not None and conf.type == "markdown"
    assert "preset `paper`, ablation `text-frozen`, profile `tiny`" in conf.data
    for field in type(config).model_fields:
        assert f"| {field} |" in conf.data, field
    assert "| warmup_steps | **0** | 2500 |" in conf.data and "| lr_encoder | **0.001** | 1e-08 |" in conf.data

    # the loss curve: a PNG in the markdown, its last version drawn from both steps
    curve = Artifact.get("pretrain-loss-curve")
    assert curve is not None and curve.type == "markdown"
    assert _png_of(curve.data).startswith(b"\x89PNG\r\n\x1a\n")
    assert "logged steps: 2" in curve.data and "step 2: loss" in curve.data

    # the probe's numbers, one row per probed epoch
    probe_table = Artifact.get("pretrain-probe")
    assert probe_table is not None and probe_table.type == "table"
    rows = json.loads(probe_table.data)
    epochs = read_jsonl(out / "epochs.jsonl")
    assert [r["epoch"] for r in rows] == [0] and rows[0]["dataset"] == "bold"
    assert rows[0]["val/mAP"] == pytest.approx(epochs[0]["probe"]["metrics"]["val/mAP"], abs=1e-4)

    # a video without frame store: Failed, naming it
    bad = df.copy()
    bad.loc[0, "video_id"] = "novideo"
    bad_manifest = write_manifest(bad, tmp_path / "bad" / "clips-00000.parquet")
    state = pretrain(manifests=str(bad_manifest), out_dir=str(tmp_path / "bad_run"), profile="tiny",
                     data_root=str(root), overrides=SMALL, return_state=True)
    assert state.is_failed() and "novideo" in str(state.message) + repr(state.result(raise_on_failure=False))


def test_loss_curve_refreshes_while_training_and_never_fails_it(tmp_path):
    """The watcher of tasks.training: a new curve when new steps are logged (not on
    every look), a probe table when an epoch was probed, a last curve at the end; a
    publisher that fails is counted, never raised."""
    from tasks.training import CURVE_KEY, PROBE_KEY, LiveRunArtifacts

    published: list[tuple[str, object]] = []
    lock = threading.Lock()

    def markdown(key, text, description):
        with lock:
            published.append((key, text))

    def table(key, rows, description):
        with lock:
            published.append((key, rows))

    def wait_for(n):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with lock:
                if len(published) >= n:
                    return
            time.sleep(0.01)
        raise AssertionError(f"{len(published)} artifacts, expected {n}: {[k for k, _ in published]}")

    def log(name, row):
        with open(tmp_path / name, "a") as f:
            f.write(json.dumps(row) + "\n")

    row = {"epoch": 0, "loss": 2.0, "lr": {"frame_weight": 1e-3}}
    with LiveRunArtifacts(tmp_path, interval_s=0.05, markdown=markdown, table=table):
        time.sleep(0.2)
        assert not published  # nothing logged yet: nothing drawn
        log("metrics.jsonl", {**row, "step": 1})
        wait_for(1)
        time.sleep(0.2)
        assert len(published) == 1  # no new step: no new version
        log("metrics.jsonl", {**row, "step": 2, "loss": 1.5})
        log("epochs.jsonl", {"epoch": 0, "step": 2, "loss": 1.75,
                             "probe": {"dataset": "bold", "metrics": {"val/mAP": 0.25}, "results": "r", "skipped": 0}})
        wait_for(3)
    assert [k for k, _ in published] == [CURVE_KEY, CURVE_KEY, PROBE_KEY, CURVE_KEY]  # the last: at the end
    assert "updated while training" in published[0][1] and "training ended" in published[3][1]
    assert "step 2: loss 1.5" in published[1][1] and _png_of(published[1][1]).startswith(b"\x89PNG")
    assert published[2][1] == [{"epoch": 0, "step": 2, "dataset": "bold", "val/mAP": 0.25, "skipped": 0,
                                "results": "r"}]

    def down(*args):
        raise ConnectionError("server away")

    with LiveRunArtifacts(tmp_path, interval_s=0.05, markdown=down, table=down) as failing:
        time.sleep(0.2)
    assert failing.failures >= 2 and failing.published == 0  # every look failed, training (the body) went on
