"""The `linear-probe` Prefect flow on a miniature EMOTIC folder with the tiny model."""

from __future__ import annotations

import pandas as pd

from emotionclip.evaluation import sample as L


def test_linear_probe_flow_writes_table_and_artifact(tmp_path):
    from prefect.artifacts import Artifact

    from flows.linear_probe import linear_probe

    root = L.make_emotic_preprocessed(tmp_path / "emotic", n=4, missing=None)
    out = tmp_path / "out"
    res = linear_probe({"emotic": str(root)}, str(out), profile="tiny", detect=False, c_mode="preset")
    assert res["rows"] == 4 and res["skipped"] == {"emotic": 0}
    df = pd.read_parquet(out / "results.parquet")
    assert set(zip(df.split, df.metric)) == {("val", "mAP"), ("val", "AUC"), ("test", "mAP"), ("test", "AUC")}
    assert (df["C"] == 2.5).all() and (df["preset"] == "authors").all()
    art = Artifact.get("linear-probe-results")
    assert art is not None and art.type == "table"
