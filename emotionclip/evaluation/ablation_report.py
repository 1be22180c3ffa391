"""The ablation study's report: one row per variant, its linear-probe metrics beside
the paper's number where the paper has one, and the two sweeps as plots.

- Named ablations (and any variant with the same switches) sit beside their row of
  paper Table 1 (component ablation, BoLD val) or Table 3 (encoder ablation); the
  full model (`sap-snce`) on another benchmark beside Table 4's EmotionCLIP row.
  Every number comes from `emotionclip.evaluation.paper`, in its units (mAP and AUC
  in percent, R2 as a fraction, as the results table stores them).
- `<name>-beta.png`: each metric against beta (paper Fig. 6, whose values were not
  extracted: only the Table 1 rows at beta 0 and 10 are marked).
- `<name>-neutral.png`: each metric and the kept-clip count against the neutral
  threshold (appendix Fig. 2: fewer neutral clips help until too few are left).

A variant record is what `emotionclip.training.variants.make_result` writes, plus
`status` (done or failed), `cached` and `error`.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from emotionclip.evaluation import paper

LEAD_COLUMNS = ["variant", "kind", "status", "cached", "ablation", "beta", "max_neutral", "kept_clips", "paper_row"]
TAIL_COLUMNS = ["step", "loss", "hash", "error"]
PAPER_SUFFIX = " paper"
# A metric column is "<dataset>/<split>/<metric>", e.g. "bold/val/mAP".
BETA_KINDS = ("beta", "base")
NEUTRAL_KINDS = ("max_neutral", "base")


def metric_key(dataset: str, split: str, metric: str) -> str:
    return f"{dataset}/{split}/{metric}"


# Metric columns in the order the paper's tables print them (Table 1: mAP, AUC, R2).
_METRIC_ORDER = ("mAP", "AUC", "R2", "accuracy", "weighted_F1", "valence_MSE", "arousal_MSE")


def _key_order(key: str) -> tuple[str, str, int, str]:
    dataset, split, metric = _split_key(key)
    rank = _METRIC_ORDER.index(metric) if metric in _METRIC_ORDER else len(_METRIC_ORDER)
    return dataset, split, rank, metric


def _split_key(key: str) -> tuple[str, str, str]:
    dataset, split, metric = key.split("/", 2)
    return dataset, split, metric


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def probe_metrics(results: pd.DataFrame | str | os.PathLike) -> dict[str, float | None]:
    """A linear-probe results table (the DataFrame or its Parquet file) as
    {"<dataset>/<split>/<metric>": value} (None where the probe gave no number)."""
    df = results if isinstance(results, pd.DataFrame) else pd.read_parquet(results)
    return {metric_key(r.dataset, r.split, r.metric): _num(r.value) for r in df.itertuples(index=False)}


def paper_reference(ablation: str | None, dataset: str, split: str, metric: str) -> tuple[float | None, str | None]:
    """The paper's number for a variant with the switches of named ablation `ablation`,
    and its source: its row of Table 1, else Table 3; for the full model (`sap-snce`)
    on a benchmark those tables do not cover, Table 4's EmotionCLIP row."""
    if not ablation:
        return None, None
    for table in ("1", "3"):
        for v in paper.paper_values(dataset, split, metric, table=table):
            if v.note == f"ablation {ablation}":
                return v.value, v.source
    if ablation == "sap-snce":
        entry = paper.paper_entry(dataset, split, metric, table="4")
        if entry is not None:
            return entry.value, entry.source
    return None, None


def paper_row(ablation: str | None) -> str | None:
    """Where a named ablation is in the paper ("Table 1: + SAP & SNCE"), None if nowhere."""
    if not ablation:
        return None
    for v in paper.VALUES:
        if v.note == f"ablation {ablation}":
            return f"{v.table}: {v.row}"
    return None


def comparison_frame(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per variant: what it is, its kept clips, every metric and the paper's
    number for it (column "<metric> paper", NaN where the paper has none)."""
    records = [dict(r) for r in records]
    keys = sorted({k for r in records for k in (r.get("metrics") or {})}, key=_key_order)
    rows = []
    for r in records:
        ref = r.get("paper_ablation")
        row: dict[str, Any] = {
            "variant": r.get("variant"), "kind": r.get("kind"), "status": r.get("status", "done"),
            "cached": bool(r.get("cached", False)), "ablation": r.get("ablation"), "beta": _num(r.get("beta")),
            "max_neutral": _num(r.get("max_neutral")), "kept_clips": r.get("kept_clips"), "paper_row": paper_row(ref),
        }
        metrics = r.get("metrics") or {}
        for key in keys:
            row[key] = _num(metrics.get(key))
            row[key + PAPER_SUFFIX] = paper_reference(ref, *_split_key(key))[0]
        row.update({"step": r.get("step"), "loss": _num(r.get("loss")), "hash": r.get("hash"), "error": r.get("error")})
        rows.append(row)
    columns = LEAD_COLUMNS + [c for k in keys for c in (k, k + PAPER_SUFFIX)] + TAIL_COLUMNS
    df = pd.DataFrame(rows, columns=columns)
    floats = ["beta", "max_neutral", "loss"] + [c for k in keys for c in (k, k + PAPER_SUFFIX)]
    df = df.astype({c: "float64" for c in floats})
    return df.astype({"kept_clips": "Int64", "step": "Int64"})


def metric_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c.count("/") == 2 and not c.endswith(PAPER_SUFFIX)]


def _digits(key: str) -> int:
    # The paper prints percentages with 2 decimals, R2 and MSE with 3; ours get one more there.
    metric = key.rsplit("/", 1)[-1]
    return 4 if metric == "R2" or "MSE" in metric else 2


def _cell(v: Any, digits: int = 2) -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def to_markdown(df: pd.DataFrame, figures: Mapping[str, str] | None = None) -> str:
    """The comparison table as Markdown (ours, then the paper's number, per metric), the
    failed variants with their errors, and the plots linked by file name."""
    keys = metric_columns(df)
    head = ["variant", "status", "kept clips"] + [f"{k} {w}" for k in keys for w in ("ours", "paper")] + ["paper row"]
    lines = ["## Ablation: variants beside the paper (Table 1, Table 3)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in df.to_dict("records"):
        status = "cached" if r["status"] == "done" and r["cached"] else r["status"]
        cells = [_cell(r["variant"]), status, _cell(r["kept_clips"])]
        for k in keys:
            cells += [_cell(r[k], _digits(k)), _cell(r[k + PAPER_SUFFIX], 2 if _digits(k) == 2 else 3)]
        cells.append(_cell(r["paper_row"]))
        lines.append("| " + " | ".join(cells) + " |")
    failed = [r for r in df.to_dict("records") if r["status"] != "done"]
    if failed:
        lines += ["", "### Failed variants", ""] + [f"- `{r['variant']}`: {_cell(r['error'])}" for r in failed]
    if figures:
        lines += ["", "### Plots", ""] + [f"![{what}]({Path(p).name})" for what, p in figures.items()]
    lines += ["", "Units as in the paper: mAP and AUC in percent, R2 as a fraction. A paper number appears "
              "where the variant has the switches of a Table 1 / Table 3 row (the paper's beta is not given; "
              "10 is the authors' code's) and trains on the paper's filter (neutral < 0.05) or the "
              "dataset's own manifests.", ""]
    return "\n".join(lines)


def _sweep(df: pd.DataFrame, kinds: tuple[str, ...], x: str) -> pd.DataFrame:
    g = df[(df["status"] == "done") & df["kind"].isin(kinds) & df[x].notna()]
    return g.sort_values(x, kind="stable")


def _png(fig: Any) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _figure(n: int) -> tuple[Any, list[Any]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.0 * n, 3.6), dpi=100, facecolor="white")
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, n, i + 1) for i in range(n)]


def beta_figure(df: pd.DataFrame) -> bytes | None:
    """PNG: each metric against beta over the beta variants and the base (None when
    there is no beta variant). The paper's Table 1 numbers are marked where a point
    has them (beta 0: + SAP; beta 10: + SAP & SNCE)."""
    g = _sweep(df, BETA_KINDS, "beta")
    keys = metric_columns(df)
    if not (g["kind"] == "beta").any() or not keys:
        return None
    fig, axes = _figure(len(keys))
    for ax, key in zip(axes, keys):
        ax.plot(g["beta"], g[key], "o-", label="ours")
        ref = g[g[key + PAPER_SUFFIX].notna()]
        if len(ref):
            ax.plot(ref["beta"], ref[key + PAPER_SUFFIX], "x", markersize=9, label="paper (Table 1)")
        ax.set_xlabel("beta (SNCE reweighting, eq. 6)")
        ax.set_ylabel(key)
        ax.legend(fontsize=8)
    fig.suptitle("Metric against beta (paper Fig. 6)", fontsize=10)
    return _png(fig)


def neutral_figure(df: pd.DataFrame) -> bytes | None:
    """PNG: each metric, and the kept-clip count, against the neutral threshold over
    the max_neutral variants and the base (None when there is no max_neutral variant)."""
    g = _sweep(df, NEUTRAL_KINDS, "max_neutral")
    keys = metric_columns(df)
    if not (g["kind"] == "max_neutral").any():
        return None
    fig, axes = _figure(len(keys) + 1)
    for ax, key in zip(axes, keys):
        ax.plot(g["max_neutral"], g[key], "o-")
        ax.set_xlabel("neutral threshold (kept if neutral < x)")
        ax.set_ylabel(key)
    ax = axes[-1]
    ax.plot(g["max_neutral"], g["kept_clips"].astype("float64"), "s-", color="tab:gray")
    ax.set_xlabel("neutral threshold (kept if neutral < x)")
    ax.set_ylabel("kept clips")
    fig.suptitle("Metric and sample size against the neutral threshold (appendix Fig. 2)", fontsize=10)
    return _png(fig)


def write_report(records: Iterable[Mapping[str, Any]], out_dir: str | os.PathLike, name: str = "ablation"
                 ) -> dict[str, str]:
    """Write `<name>.parquet` and `<name>.md`, and the plots `<name>-beta.png` and
    `<name>-neutral.png` when there is such a sweep, atomically. Returns their paths
    (keys parquet, markdown, beta, neutral)."""
    from emotionclip.core.io import atomic_write_bytes, atomic_write_parquet, atomic_write_text

    df = comparison_frame(records)
    out = Path(out_dir)
    paths = {"parquet": str(out / f"{name}.parquet"), "markdown": str(out / f"{name}.md")}
    atomic_write_parquet(paths["parquet"], df)
    figures: dict[str, str] = {}
    for key, make, what in (("beta", beta_figure, "metric against beta"),
                            ("neutral", neutral_figure, "metric and kept clips against the neutral threshold")):
        png = make(df)
        if png is not None:
            paths[key] = str(out / f"{name}-{key}.png")
            atomic_write_bytes(paths[key], png)
            figures[what] = paths[key]
    atomic_write_text(paths["markdown"], to_markdown(df, figures))
    return paths


def _plain(v: Any) -> Any:
    if v is None or v is pd.NA:
        return None
    if hasattr(v, "item"):  # numpy scalars
        v = v.item()
    return None if isinstance(v, float) and math.isnan(v) else v


def table_records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """The comparison table as JSON-safe rows (NaN and NA as None), for a table artifact."""
    return [{k: _plain(v) for k, v in r.items()} for r in df.to_dict("records")]


def outcomes(records: Iterable[Mapping[str, Any]]) -> dict[str, list[str]]:
    """The variants by outcome: failed, cached (finished before, nothing ran) and
    trained (pre-trained and probed this time)."""
    records = list(records)
    done = [r for r in records if r["status"] == "done"]
    return {"failed": [r["variant"] for r in records if r["status"] == "failed"],
            "cached": [r["variant"] for r in done if r.get("cached")],
            "trained": [r["variant"] for r in done if not r.get("cached")]}
