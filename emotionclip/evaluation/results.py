"""The results table: one row per (dataset, split, metric), our number beside the
paper's EmotionCLIP number (paper Table 4, linear probe) and the difference, with
the VideoCLIP and X-CLIP linear-probe rows of Table 4 as context, the model, the
probe preset, C and the seed. For BoLD and Emotic, the per-category AP and AUC
beside appendix Table 5 (Emotic also beside appendix Table 3's supervised methods),
and one bar chart of per-category AP per dataset.

Written as Parquet (`<name>.parquet`, `<name>-categories.parquet`), Markdown
(`<name>.md`) and PNG (`<name>-ap-<dataset>.png`). Every paper number comes from
`emotionclip.evaluation.paper`, in the paper's units: percent for the
classification metrics, R2 as a fraction, MSE as is.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from emotionclip.evaluation import paper
from emotionclip.evaluation.metrics import PER_CATEGORY

COLUMNS = ["dataset", "split", "metric", "value", "paper", "diff", "paper_source", "videoclip", "xclip",
           "model", "model_fingerprint", "preset", "C", "c_source", "c_mode", "c_trials", "seed", "n_train", "n_eval",
           "n_skipped", "per_category", "notes", "created"]
CATEGORY_COLUMNS = ["dataset", "split", "category", "metric", "value", "paper", "diff", "paper_source",
                    "kosti", "emoticon", "model", "seed"]
_FLOATS = ("value", "paper", "diff", "videoclip", "xclip", "C")

# The probe computes R2 in percent (metrics.r2_percent, as the authors' linear_eval.py
# prints it); the paper's tables give it as a fraction (0.133): the table stores the
# paper's unit so that ours and the paper's sit side by side.
TO_PAPER_UNITS = {"R2": 0.01}
# Per-category metric name -> the aggregate it averages to.
_CATEGORY_METRIC = {"mAP": "AP", "AUC": "AUC"}
CONTEXT_METHODS = {"videoclip": "VideoCLIP", "xclip": "X-CLIP"}


def paper_fields(dataset: str, split: str, metric: str, value: float | None) -> dict[str, Any]:
    """The paper columns of one results row: EmotionCLIP's number, ours minus it, its
    source, and the VideoCLIP and X-CLIP linear-probe numbers (None: not reported)."""
    entry = paper.paper_entry(dataset, split, metric)
    ref = entry.value if entry else None
    diff = value - ref if ref is not None and value is not None and not math.isnan(value) else None
    out = {"paper": ref, "diff": diff, "paper_source": entry.source if entry else None}
    for col, method in CONTEXT_METHODS.items():
        out[col] = paper.paper_value(dataset, split, metric, method=method, table="4")
    return out


def _category_names(dataset: str, n: int) -> list[str]:
    from emotionclip.evaluation.datasets import get_spec

    classes = list(get_spec(dataset).classes)
    return classes if len(classes) == n else [str(i) for i in range(n)]


def rows_from_probe(result: Any, *, model: str, model_fp: str, preset: str, seed: int, n_train: int,
                    n_eval: dict[str, int], n_skipped: int, extra: dict[str, dict[str, float]] | None = None
                    ) -> list[dict[str, Any]]:
    """Table rows of one `probes.ProbeResult` (plus extra split -> metric -> value, e.g. BoLD R2).
    A multi-label mAP or AUC row carries its per-category values in `per_category`
    (JSON: category -> value)."""
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    metrics = {k: dict(v) for k, v in result.metrics.items()}
    for split, vals in (extra or {}).items():
        metrics.setdefault(split, {}).update(vals)
    notes = json.dumps({"search_scores": {str(k): v for k, v in result.search_scores.items()}, **result.notes},
                       sort_keys=True, default=str)
    rows = []
    for split, vals in metrics.items():
        for metric, value in vals.items():
            if metric == "classes_scored" or metric in PER_CATEGORY.values():
                continue
            value = float(value) * TO_PAPER_UNITS.get(metric, 1.0)
            per_cat = vals.get(PER_CATEGORY.get(metric, ""))
            per_category = None
            if per_cat is not None:
                names = _category_names(result.dataset, len(per_cat))
                per_category = json.dumps({n: (None if math.isnan(v) else float(v)) for n, v in zip(names, per_cat)})
            rows.append({
                "dataset": result.dataset, "split": split, "metric": metric, "value": value,
                **paper_fields(result.dataset, split, metric, value), "model": model,
                "model_fingerprint": model_fp[:16], "preset": preset,
                "C": float(result.c) if result.c is not None else None, "c_source": result.c_source,
                # the C search (appendix B.3): its mode and every trial's C and score, JSON
                "c_mode": getattr(result, "c_mode", None),
                "c_trials": json.dumps(getattr(result, "c_trials", None) or []),
                "seed": int(seed), "n_train": int(n_train), "n_eval": int(n_eval.get(split, 0)),
                "n_skipped": int(n_skipped), "per_category": per_category, "notes": notes, "created": created,
            })
    return rows


def to_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """The results DataFrame; the paper columns are (re)derived from `paper` for every row."""
    records = []
    for r in rows:
        r = dict(r)
        value = r.get("value")
        r.update(paper_fields(r["dataset"], r["split"], r["metric"], None if value is None else float(value)))
        records.append(r)
    df = pd.DataFrame(records, columns=COLUMNS)
    return df.astype({c: "float64" for c in _FLOATS})


def category_frame(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, split, category, AP or AUC) of the rows that carry
    per-category values, beside appendix Table 5 (and, for Emotic AP, the Kosti et al.
    and EmotiCon columns of appendix Table 3)."""
    records = []
    for r in df.itertuples(index=False):
        if not isinstance(r.per_category, str) or r.metric not in _CATEGORY_METRIC:
            continue
        metric = _CATEGORY_METRIC[r.metric]
        for category, value in json.loads(r.per_category).items():
            entry = paper.paper_entry(r.dataset, r.split, metric, category=category, table="A5")
            value = float("nan") if value is None else float(value)
            ref = entry.value if entry else None
            records.append({
                "dataset": r.dataset, "split": r.split, "category": category, "metric": metric, "value": value,
                "paper": ref, "diff": value - ref if ref is not None else None,
                "paper_source": entry.source if entry else None,
                "kosti": paper.paper_value(r.dataset, r.split, metric, "Kosti et al.", category, table="A3"),
                "emoticon": paper.paper_value(r.dataset, r.split, metric, "EmotiCon", category, table="A3"),
                "model": r.model, "seed": r.seed,
            })
    out = pd.DataFrame(records, columns=CATEGORY_COLUMNS)
    return out.astype({c: "float64" for c in ("value", "paper", "diff", "kosti", "emoticon")})


def _isnum(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def _fmt(v: Any, digits: int = 2, sign: bool = False) -> str:
    if not _isnum(v):
        return "-"
    if isinstance(v, float):
        return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"
    return str(v)


def _digits(metric: str) -> tuple[int, int]:
    """(ours and the difference, the paper's) decimals: the paper prints percentages
    with 2, R2 and MSE with 3; ours get one more where the unit is not percent."""
    if metric == "R2" or "MSE" in metric or metric.endswith("_r"):
        return 4, 3
    return 2, 2


def _short_source(source: Any) -> str:
    # "paper Table 4(a), row 'EmotionCLIP', column 'mAP ↑'" -> "Table 4(a)"
    return source.removeprefix("paper ").split(",")[0] if isinstance(source, str) else "-"


def _category_markdown(cats: pd.DataFrame, figures: dict[str, str]) -> list[str]:
    lines: list[str] = []
    for (dataset, split), g in cats.groupby(["dataset", "split"], sort=False):
        ap = g[g.metric == "AP"].set_index("category")
        auc = g[g.metric == "AUC"].set_index("category")
        with_a3 = ap["kosti"].notna().any() or ap["emoticon"].notna().any()
        head = ["category", "AP ours", "AP paper", "AP ours − paper", "AUC ours", "AUC paper", "AUC ours − paper"]
        if with_a3:
            head += ["AP Kosti et al.", "AP EmotiCon"]
        beside = (" beside appendix Table 5" + (" and appendix Table 3" if with_a3 else "")
                  if g["paper"].notna().any() else " (the paper reports none for this split)")
        lines += ["", f"## {dataset} {split}: per-category AP and AUC{beside}", "",
                  "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        cats_order = list(dict.fromkeys(list(ap.index) + list(auc.index)))

        def cell(frame: pd.DataFrame, cat: str, col: str, sign: bool = False) -> str:
            return _fmt(float(frame.at[cat, col]), 2, sign) if cat in frame.index else "-"

        for cat in cats_order:
            row = [cat, cell(ap, cat, "value"), cell(ap, cat, "paper"), cell(ap, cat, "diff", True),
                   cell(auc, cat, "value"), cell(auc, cat, "paper"), cell(auc, cat, "diff", True)]
            if with_a3:
                row += [cell(ap, cat, "kosti"), cell(ap, cat, "emoticon")]
            lines.append("| " + " | ".join(row) + " |")
        # The average row: ours over the scored categories (= the run's mAP / AUC), the paper's as printed.
        avg = ["**average**"]
        for frame, metric in ((ap, "mAP"), (auc, "AUC")):
            ours = float(frame["value"].mean()) if len(frame) else float("nan")
            ref = paper.paper_value(dataset, split, metric, table="A5")
            avg += [_fmt(ours), _fmt(ref), _fmt(ours - ref if ref is not None else None, 2, True)]
        if with_a3:
            avg += [_fmt(paper.paper_value(dataset, split, "mAP", m, table="A3")) for m in ("Kosti et al.", "EmotiCon")]
        lines.append("| " + " | ".join(avg) + " |")
        if dataset in figures and split == _figure_split(cats, dataset):
            lines += ["", f"![per-category AP, {dataset} {split}]({Path(figures[dataset]).name})"]
    return lines


def to_markdown(df: pd.DataFrame, figures: dict[str, str] | None = None) -> str:
    """The results as Markdown: the main table, then one per-category table per
    multi-label dataset and split that has per-category values. `figures`: dataset ->
    PNG path, linked by file name (the PNG sits beside the Markdown)."""
    lines = ["| dataset | split | metric | ours | paper | ours − paper | paper source | VideoCLIP | X-CLIP "
             "| C | C from | model | seed | n eval |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in df.itertuples(index=False):
        ours_d, paper_d = _digits(r.metric)
        lines.append(
            f"| {r.dataset} | {r.split} | {r.metric} | {_fmt(r.value, ours_d)} | {_fmt(r.paper, paper_d)} | "
            f"{_fmt(r.diff, ours_d, sign=True)} | {_short_source(r.paper_source)} | {_fmt(r.videoclip, paper_d)} | "
            f"{_fmt(r.xclip, paper_d)} | {_fmt(None if pd.isna(r.C) else float(r.C), 3)} | {r.c_source} | "
            f"{r.model} | {r.seed} | {r.n_eval} |")
    lines += ["", "paper: EmotionCLIP's linear-probe number in paper Table 4 (Zhang et al., CVPR 2023); "
              "VideoCLIP, X-CLIP: their linear-probe rows of the same table, as context; "
              "\"-\": the paper reports no number for that cell. Units are the paper's: mAP, AUC, accuracy and "
              "weighted F1 in percent, R2 as a fraction, MSE and Pearson r as is (lower MSE is better). "
              "Table 4(a) prints VideoCLIP's BoLD R2 as -5.11, likely a percentage; shown as printed."]
    cats = category_frame(df)
    if len(cats):
        lines += _category_markdown(cats, figures or {})
    return "\n".join(lines) + "\n"


def category_ap_figure(cats: pd.DataFrame, dataset: str, split: str) -> bytes:
    """PNG bytes: per-category AP of one dataset and split, ours against the paper's
    (appendix Table 5; for Emotic also appendix Table 3's Kosti et al. and EmotiCon)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    g = cats[(cats.dataset == dataset) & (cats.split == split) & (cats.metric == "AP")]
    series = [("ours", g["value"].to_numpy(float)), ("EmotionCLIP, paper", g["paper"].to_numpy(float))]
    series += [(label, g[col].to_numpy(float)) for col, label in
               (("kosti", "Kosti et al., paper"), ("emoticon", "EmotiCon, paper")) if g[col].notna().any()]
    series = [(label, v) for label, v in series if np.isfinite(v).any()]
    n, k = len(g), max(len(series), 1)
    fig = Figure(figsize=(max(8.0, 0.45 * n + 2), 4.5), dpi=100, facecolor="white")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(n)
    width = 0.8 / k
    for i, (label, v) in enumerate(series):
        ax.bar(x + (i - (k - 1) / 2) * width, np.nan_to_num(v, nan=0.0), width, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels(list(g["category"]), rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("AP (%)")
    ax.set_title(f"{dataset} {split}: per-category AP, ours and the paper's (appendix Table 5"
                 + (", appendix Table 3)" if len(series) > 2 else ")"))
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _figure_split(cats: pd.DataFrame, dataset: str) -> str:
    # One chart per dataset: the split the paper reports when the run has it.
    splits = list(dict.fromkeys(cats[cats.dataset == dataset]["split"]))
    with_paper = [s for s in splits if cats[(cats.dataset == dataset) & (cats.split == s)]["paper"].notna().any()]
    return (with_paper or splits)[0]


def write_results(df: pd.DataFrame, out_dir: str | os.PathLike, name: str = "results") -> dict[str, str]:
    """Write `<name>.parquet` and `<name>.md` atomically, and, when the rows carry
    per-category values, `<name>-categories.parquet` and one `<name>-ap-<dataset>.png`
    per multi-label dataset. Returns their paths (keys parquet, markdown,
    categories, figure:<dataset>)."""
    from emotionclip.core.io import atomic_write_bytes, atomic_write_parquet, atomic_write_text

    out = Path(out_dir)
    paths = {"parquet": str(out / f"{name}.parquet"), "markdown": str(out / f"{name}.md")}
    atomic_write_parquet(paths["parquet"], df)
    cats = category_frame(df)
    figures: dict[str, str] = {}
    if len(cats):
        paths["categories"] = str(out / f"{name}-categories.parquet")
        atomic_write_parquet(paths["categories"], cats)
        for dataset in dict.fromkeys(cats["dataset"]):
            png = str(out / f"{name}-ap-{dataset}.png")
            atomic_write_bytes(png, category_ap_figure(cats, dataset, _figure_split(cats, dataset)))
            figures[dataset] = png
            paths[f"figure:{dataset}"] = png
    atomic_write_text(paths["markdown"], to_markdown(df, figures))
    return paths


def table_records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """The results as JSON-safe rows (NaN as None) for a table display; the free-text
    notes are left out, too long for a table cell."""
    return [{k: (None if v != v else v) if isinstance(v, float) else v for k, v in r.items() if k != "notes"}
            for r in df.to_dict("records")]
