"""The `pretrain` Prefect flow on the tiny model (a temporary Prefect server)."""

from __future__ import annotations

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


def test_pretrain_flow_trains_reports_and_fails_with_reason(corpus, tmp_path):
    from prefect.artifacts import Artifact

    from flows.pretrain import pretrain

    root, manifest, df = corpus
    out = tmp_path / "run"
    result = pretrain(manifests=str(manifest.parent), out_dir=str(out), profile="tiny", data_root=str(root),
                      ablation="text-frozen", overrides=SMALL)
    assert result["clips"] == 4 and result["step"] == 2 and result["checkpoint"].endswith(".pt")
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2]
    table = Artifact.get("pretrain-epochs")
    assert table is not None and '"epoch": 0' in table.data.replace("'", '"')
    report = Artifact.get("pretrain-checkpoint")
    assert report is not None and "ablation: `text-frozen`" in report.data

    # a video without frame store: Failed, naming it
    bad = df.copy()
    bad.loc[0, "video_id"] = "novideo"
    bad_manifest = write_manifest(bad, tmp_path / "bad" / "clips-00000.parquet")
    state = pretrain(manifests=str(bad_manifest), out_dir=str(tmp_path / "bad_run"), profile="tiny",
                     data_root=str(root), overrides=SMALL, return_state=True)
    assert state.is_failed() and "novideo" in str(state.message) + repr(state.result(raise_on_failure=False))
