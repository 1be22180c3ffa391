"""The paper's linear-probe numbers (emotionclip.evaluation.paper): each table is
internally consistent as printed, the tables agree with each other, every number has
a source; and the results tables that show them beside a run's numbers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score
from typer.testing import CliRunner

from emotionclip.evaluation import metrics as M
from emotionclip.evaluation import paper as P
from emotionclip.evaluation import results as R
from emotionclip.evaluation.datasets.base import EMOTIC_CATEGORIES

ROUNDING = 0.005 + 1e-9  # a mean of 2-decimal cells, printed with 2 decimals


def _column(table: str, dataset: str, metric: str, method: str = "EmotionCLIP") -> dict[str, float]:
    return {v.category: v.value for v in P.paper_values(dataset, metric=metric, method=method, table=table)
            if v.category}


@pytest.mark.parametrize("dataset,split,metric,average", [
    ("bold", "val", "AP", 22.51), ("bold", "val", "AUC", 69.30),
    ("emotic", "test", "AP", 32.91), ("emotic", "test", "AUC", 71.41),
])
def test_appendix_table5_columns_average_to_table4(dataset, split, metric, average):
    col = _column("A5", dataset, metric)
    assert list(col) == list(P.CATEGORIES) and len(col) == 26
    aggregate = "mAP" if metric == "AP" else metric
    assert P.paper_value(dataset, split, aggregate) == average  # Table 4(a) / 4(c), EmotionCLIP row
    assert P.paper_value(dataset, split, aggregate, table="A5") == average  # the "Average" row
    assert abs(np.mean(list(col.values())) - average) <= ROUNDING


def test_appendix_table3_columns_average_to_its_map_row():
    for method, printed in (("Kosti et al.", 27.38), ("EmotionCLIP", 32.91)):
        col = _column("A3", "emotic", "AP", method)
        assert len(col) == 26 and abs(np.mean(list(col.values())) - printed) <= ROUNDING
        assert P.paper_value("emotic", "test", "mAP", method, table="A3") == printed
    # EmotiCon's categories average to 32.038, printed 32.03: kept as printed, with a note
    emoticon = _column("A3", "emotic", "AP", "EmotiCon")
    assert np.mean(list(emoticon.values())) == pytest.approx(32.038, abs=1e-3)
    entry = P.paper_entry("emotic", "test", "mAP", "EmotiCon", table="A3")
    assert entry.value == 32.03 and "32.038" in entry.note
    # appendix Table 3's EmotionCLIP column is appendix Table 5's Emotic AP column
    assert _column("A3", "emotic", "AP") == _column("A5", "emotic", "AP")
    # and its EmotiCon is Table 4(c)'s EmotiCon (GCN)
    assert P.paper_value("emotic", "test", "mAP", "EmotiCon (GCN)") == 32.03


def test_table4_spot_checks():
    assert P.paper_value("bold", "val", "mAP") == 22.51
    assert P.paper_value("bold", "val", "AUC") == 69.30
    assert P.paper_value("bold", "val", "R2") == 0.133
    assert P.paper_value("bold", "val", "R2", method="X-CLIP") == -0.03
    assert P.paper_value("bold", "val", "mAP", method="Pikoulis et al.") == 19.29
    assert P.paper_value("moviegraphs", "val", "accuracy") == 41.60
    assert P.paper_value("moviegraphs", "test", "accuracy") == 32.35
    assert P.paper_value("moviegraphs", "test", "accuracy", method="Affect2MM") == 30.58
    assert P.paper_value("emotic", "test", "mAP") == 32.91 and P.paper_value("emotic", "test", "AUC") == 71.41
    assert P.paper_value("emotic", "test", "AUC", method="EmotiCon (Depth)") is None  # "-" in the paper
    assert P.paper_value("meld", "test", "accuracy") == 48.28 and P.paper_value("meld", "test", "weighted_F1") == 34.59
    assert P.paper_value("meld", "test", "weighted_F1", method="VideoCLIP") == 32.06
    assert P.paper_value("liris", "test", "valence_MSE") == 0.096
    assert P.paper_value("liris", "test", "arousal_MSE") == 0.155
    assert P.paper_value("liris", "test", "arousal_MSE", method="X-CLIP") == 0.246
    assert P.paper_value("meld", "dev", "accuracy") is None and P.paper_value("emotic", "val", "mAP") is None
    assert P.paper_entry("moviegraphs", "test", "accuracy", "Affect2MM").multimodal
    t4 = P.paper_table("4")
    assert len(t4) == 7 + 5 + 8 + 5 + 11
    assert set(t4[t4.group == "linear-eval"]["method"]) == {"VideoCLIP", "X-CLIP", "EmotionCLIP"}
    assert P.paper_table("4a").set_index("method").at["EmotionCLIP", "mAP ↑"] == 22.51


def test_ablation_tables_match_their_printed_differences_and_each_other():
    t1 = P.paper_table("1").set_index("row")
    vanilla = t1.loc["EmotionCLIP (vanilla)", ["mAP", "AUC", "R2"]].to_numpy(float)
    for row, printed in P.TABLE1_PRINTED_DELTAS.items():
        np.testing.assert_allclose(t1.loc[row, ["mAP", "AUC", "R2"]].to_numpy(float) - vanilla, printed, atol=1e-9)
    t3 = P.paper_table("3").set_index("ablation")
    first = t3.loc["sap-snce", ["mAP", "AUC"]].to_numpy(float)
    for name, printed in P.TABLE3_PRINTED_CHANGE.items():
        change = 100 * (t3.loc[name, ["mAP", "AUC"]].to_numpy(float) / first - 1)
        for c, p in zip(change, printed):
            # printed as whole percent (-45) or with one decimal (-5.9), apparently before rounding the cells
            assert abs(c - p) <= (0.5 if isinstance(p, int) else 0.1), (name, c, p)
    # the full model is the same number in Tables 1, 3, 4(a) and appendix Table 5
    for metric, v in (("mAP", 22.51), ("AUC", 69.30)):
        assert {x.value for x in P.paper_values("bold", "val", metric, table=None) if x.category is None
                and x.method in ("EmotionCLIP", "EmotionCLIP + SAP & SNCE",
                                 "EmotionCLIP (text ✓, frame ✓, temporal -)")} == {v}
    # the training ablations carry the same numbers
    from emotionclip.training.ablations import ABLATIONS

    for table in ("1", "3"):
        for rec in P.paper_table(table).to_dict("records"):
            for metric in ("mAP", "AUC", "R2"):
                if metric in rec and rec[metric] == rec[metric]:
                    assert ABLATIONS[rec["ablation"]].bold[metric] == rec[metric]


def test_every_value_has_a_source_and_the_papers_unit():
    tables = set(P.TABLES.values())
    assert len(P.VALUES) == 74 + 12 + 12 + 81 + 108
    keys = set()
    for v in P.VALUES:
        assert v.table in tables and v.row and v.column and v.source.startswith(f"paper {v.table}, row ")
        unit = P.FRACTION if v.metric == "R2" else P.MSE_UNIT if v.metric.endswith("MSE") else P.PERCENT
        assert v.unit == unit, v
        assert v.split == {"bold": "val"}.get(v.dataset, v.split) and v.split in ("val", "test")
        if v.unit == P.PERCENT:
            assert 0 < v.value < 100
        keys.add((v.table, v.row, v.column))
    assert len(keys) == len(P.VALUES)  # one number per cell
    recs = P.records("A5")
    assert len(recs) == 108 and all(r["source"] for r in recs)


def test_table_names():
    assert P.table_keys("4") == ("4a", "4b", "4c", "4d", "4e")
    assert P.table_keys("5") == P.table_keys("A5") == P.table_keys("appendix Table 5") == ("A5",)
    assert P.table_keys("Table 4(c)") == P.table_keys("4c") == ("4c",)
    assert P.table_keys("3") == ("3",) and P.table_keys("a3") == ("A3",)
    with pytest.raises(KeyError):
        P.table_keys("7")
    md = P.table_markdown("4e")
    assert "| EmotionCLIP | linear-eval | 0.096 | 0.155 |" in md and "audio and text" in md


def test_per_category_metrics_equal_sklearn():
    rng = np.random.default_rng(0)
    y = (rng.uniform(size=(40, 5)) > 0.6).astype(int)
    y[:, 4] = 0  # no positive: undefined
    s = rng.uniform(size=(40, 5))
    ap, auc = M.per_category_ap(y, s), M.per_category_auc(y, s)
    assert np.isnan(ap[4]) and np.isnan(auc[4])
    for i in range(4):
        assert ap[i] == pytest.approx(100 * average_precision_score(y[:, i], s[:, i]))
        assert auc[i] == pytest.approx(100 * roc_auc_score(y[:, i], s[:, i]))
    m = M.multilabel_metrics(y, s)
    assert m["mAP"] == pytest.approx(np.nanmean(ap)) and m["AUC"] == pytest.approx(np.nanmean(auc))
    np.testing.assert_array_equal(m["AP_per_category"], ap)


def _probe_rows(dataset: str, split: str, extra: dict | None = None) -> list[dict]:
    from emotionclip.evaluation.probes import ProbeResult

    rng = np.random.default_rng(1)
    y = (rng.uniform(size=(60, 26)) > 0.7).astype(int)
    s = np.clip(y * 0.3 + rng.uniform(size=y.shape), 0, None)
    result = ProbeResult(dataset=dataset, c=1.0, c_source="preset", metrics={split: M.multilabel_metrics(y, s)})
    return R.rows_from_probe(result, model="tiny", model_fp="f" * 32, preset="authors", seed=0, n_train=10,
                             n_eval={split: 60}, n_skipped=0, extra=extra)


def test_results_tables_beside_the_paper(tmp_path):
    # the probe gives R2 in percent; the table holds it as a fraction, as the paper prints it
    rows = _probe_rows("bold", "val", extra={"val": {"R2": 12.0}})
    df = R.to_frame(rows)
    r2 = df.set_index("metric").loc["R2"]
    assert r2["value"] == pytest.approx(0.12) and r2["paper"] == 0.133 and r2["diff"] == pytest.approx(-0.013)
    assert r2["videoclip"] == -5.11 and r2["xclip"] == -0.03
    paths = R.write_results(df, tmp_path, name="results-bold")
    md = (tmp_path / "results-bold.md").read_text()
    assert "| bold | val | R2 | 0.1200 | 0.133 | -0.0130 | Table 4(a) | -5.110 | -0.030 |" in md
    m_ap = df.set_index("metric").loc["mAP"]
    assert f"| bold | val | mAP | {m_ap['value']:.2f} | 22.51 | {m_ap['value'] - 22.51:+.2f} | Table 4(a) |" in md
    # per category, beside appendix Table 5; BoLD has no appendix Table 3 columns
    assert "## bold val: per-category AP and AUC beside appendix Table 5\n" in md
    cats = pd.read_parquet(paths["categories"])
    assert len(cats) == 52 and set(cats["metric"]) == {"AP", "AUC"}
    pain = cats[(cats.category == "Pain") & (cats.metric == "AP")].iloc[0]
    assert pain["paper"] == 14.58 and pain["diff"] == pytest.approx(pain["value"] - 14.58)
    assert pain["paper_source"] == "paper appendix Table 5, row 'Pain', column 'BoLD [4] AP'"
    assert cats[cats.metric == "AP"]["value"].mean() == pytest.approx(m_ap["value"])
    assert "| **average** |" in md and "| 22.51 |" in md
    png = tmp_path / "results-bold-ap-bold.png"
    assert paths["figure:bold"] == str(png) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![per-category AP, bold val](results-bold-ap-bold.png)" in md
    main = pd.read_parquet(paths["parquet"])
    assert json.loads(main.set_index("metric").at["mAP", "per_category"])["Pain"] == pytest.approx(pain["value"])


def test_emotic_per_category_beside_appendix_tables_3_and_5(tmp_path):
    rows = _probe_rows("emotic", "test")
    paths = R.write_results(R.to_frame(rows), tmp_path, name="results-emotic")
    md = (tmp_path / "results-emotic.md").read_text()
    assert "## emotic test: per-category AP and AUC beside appendix Table 5 and appendix Table 3" in md
    cats = pd.read_parquet(paths["categories"])
    assert list(cats[cats.metric == "AP"]["category"]) == EMOTIC_CATEGORIES
    sad = cats[(cats.category == "Sadness") & (cats.metric == "AP")].iloc[0]
    assert (sad["paper"], sad["kosti"], sad["emoticon"]) == (43.01, 19.66, 26.15)
    assert cats[cats.metric == "AUC"]["kosti"].isna().all()  # appendix Table 3 is AP only
    # the average row: ours, paper 32.91 (AP), 71.41 (AUC), Kosti et al. 27.38, EmotiCon 32.03
    avg = next(line for line in md.splitlines() if line.startswith("| **average** |"))
    assert "| 32.91 |" in avg and "| 71.41 |" in avg and avg.endswith("| 27.38 | 32.03 |")
    assert (tmp_path / "results-emotic-ap-emotic.png").stat().st_size > 1000


def test_results_without_per_category_values_write_no_figure(tmp_path):
    rows = [{"dataset": "meld", "split": "test", "metric": "accuracy", "value": 50.0, "model": "m",
             "model_fingerprint": "x", "preset": "authors", "C": 1.0, "c_source": "preset", "seed": 0,
             "n_train": 1, "n_eval": 1, "n_skipped": 0, "notes": "{}", "created": "now"}]
    paths = R.write_results(R.to_frame(rows), tmp_path)
    assert set(paths) == {"parquet", "markdown"}
    assert "| meld | test | accuracy | 50.00 | 48.28 | +1.72 | Table 4(d) | 45.19 | 38.31 |" in (
        tmp_path / "results.md").read_text()


def test_cli_prints_the_paper_tables():
    from emotionclip.cli.eval import app

    runner = CliRunner()
    res = runner.invoke(app, ["paper", "--table", "4"])
    assert res.exit_code == 0, res.output
    for text in ("Table 4(a)", "Table 4(e)", "| EmotionCLIP | linear-eval | 22.51 | 69.30 | 0.133 |",
                 "| X-CLIP [55] | linear-eval | 38.31 | 32.46 |"):
        assert text in res.output
    res = runner.invoke(app, ["paper", "--table", "5", "--json"])
    assert res.exit_code == 0, res.output
    recs = json.loads(res.output)
    assert len(recs) == 108 and all(r["source"].startswith("paper appendix Table 5") for r in recs)
    res = runner.invoke(app, ["paper", "--json"])
    assert len(json.loads(res.output)) == len(P.VALUES)
    assert runner.invoke(app, ["paper", "--table", "9"]).exit_code == 2
