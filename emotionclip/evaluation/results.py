"""The results table: one row per (dataset, split, metric), our number beside the
paper's (Table 4, EmotionCLIP row, linear probe), with the model, the probe
preset, C and the seed. Written as Parquet and Markdown.

The paper's numbers are kept in `PAPER_TABLE4`, each with its provenance in
`PAPER_SOURCES`. The paper's own tables could not be read from this project's
environment (only the first page of its text is reachable offline), so only the
values that public third-party copies give (BoLD and EMOTIC mAP) are filled in, marked
"*" in the Markdown; the others stay `None` and show as "n/r" (not recorded).
Never a value from memory: fill the rest from Table 4 of Zhang et al., CVPR 2023,
and set `PAPER_VERIFIED` once every entry was checked against the PDF.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

# (dataset, split, metric) -> EmotionCLIP's linear-probe number in Table 4 of the paper.
# None = not recorded here (see module docstring); never a guessed value.
PAPER_TABLE4: dict[tuple[str, str, str], float | None] = {
    ("bold", "val", "mAP"): 22.51,  # third-party copy, see PAPER_SOURCES
    ("bold", "val", "AUC"): None,
    ("bold", "val", "R2"): None,
    ("moviegraphs", "val", "accuracy"): None,
    ("moviegraphs", "test", "accuracy"): None,
    ("meld", "test", "accuracy"): None,
    ("meld", "test", "weighted_F1"): None,
    ("emotic", "test", "mAP"): 32.91,  # third-party copy, see PAPER_SOURCES
    ("emotic", "test", "AUC"): None,
    ("liris", "test", "valence_MSE"): None,
    ("liris", "test", "arousal_MSE"): None,
}
# Where each filled value comes from. Both agree with each other's sources, but
# neither was read from the paper itself.
PAPER_SOURCES: dict[tuple[str, str, str], str] = {
    ("bold", "val", "mAP"): "third-party copies: wizwand.com listing 'Emotion Recognition BoLD mAP 22.51'; a public "
                            "literature review 'BoLD 22.51 vs X-CLIP 13.26 (T4)'",
    ("emotic", "test", "mAP"): "third-party copy: Papers-with-Code EMOTIC mAP leaderboard entry 'EmotionCLIP "
                               "(linear-probe evaluation) 32.91' (split not stated there; EMOTIC's test split assumed)",
}
PAPER_VERIFIED = False

COLUMNS = ["dataset", "split", "metric", "value", "paper", "model", "model_fingerprint", "preset", "C",
           "c_source", "seed", "n_train", "n_eval", "n_skipped", "notes", "created"]


def paper_value(dataset: str, split: str, metric: str) -> float | None:
    return PAPER_TABLE4.get((dataset, split, metric))


def paper_cell(dataset: str, split: str, metric: str, digits: int = 2) -> str:
    """The Markdown cell of the paper's number: "n/r" when not recorded, "*" when
    the value is a third-party copy not yet checked against the paper."""
    value = paper_value(dataset, split, metric)
    if value is None:
        return "n/r"
    unverified = not PAPER_VERIFIED and (dataset, split, metric) in PAPER_SOURCES
    return f"{value:.{digits}f}" + ("*" if unverified else "")


def rows_from_probe(result: Any, *, model: str, model_fp: str, preset: str, seed: int, n_train: int,
                    n_eval: dict[str, int], n_skipped: int, extra: dict[str, dict[str, float]] | None = None
                    ) -> list[dict[str, Any]]:
    """Table rows of one `probes.ProbeResult` (plus extra split -> metric -> value, e.g. BoLD R2)."""
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    metrics = {k: dict(v) for k, v in result.metrics.items()}
    for split, vals in (extra or {}).items():
        metrics.setdefault(split, {}).update(vals)
    notes = json.dumps({"search_scores": {str(k): v for k, v in result.search_scores.items()}, **result.notes},
                       sort_keys=True, default=str)
    rows = []
    for split, vals in metrics.items():
        for metric, value in vals.items():
            if metric == "classes_scored":
                continue
            rows.append({
                "dataset": result.dataset, "split": split, "metric": metric, "value": float(value),
                "paper": paper_value(result.dataset, split, metric), "model": model,
                "model_fingerprint": model_fp[:16], "preset": preset,
                "C": float(result.c) if result.c is not None else None, "c_source": result.c_source,
                "seed": int(seed), "n_train": int(n_train), "n_eval": int(n_eval.get(split, 0)),
                "n_skipped": int(n_skipped), "notes": notes, "created": created,
            })
    return rows


def to_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(list(rows), columns=COLUMNS)
    return df.astype({"value": "float64", "paper": "float64", "C": "float64"})


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "n/r"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def to_markdown(df: pd.DataFrame) -> str:
    lines = ["| dataset | split | metric | ours | paper (Table 4) | C | C from | model | seed | n eval |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in df.itertuples(index=False):
        digits = 4 if "MSE" in r.metric or r.metric.endswith("_r") else 2
        lines.append(f"| {r.dataset} | {r.split} | {r.metric} | {_fmt(r.value, digits)} | "
                     f"{paper_cell(r.dataset, r.split, r.metric, digits)} | "
                     f"{_fmt(None if pd.isna(r.C) else float(r.C), 3)} | {r.c_source} | {r.model} | {r.seed} | {r.n_eval} |")
    note = ("\nPaper numbers: EmotionCLIP row of Table 4 (linear probe), Zhang et al., CVPR 2023. "
            + ("" if PAPER_VERIFIED else "n/r = not recorded in this repository yet (to be copied from the paper); "
               "* = a third-party copy of the paper's number, not yet checked against the paper "
               "(sources in emotionclip.evaluation.results.PAPER_SOURCES). ")
            + "Classification metrics and R2 in percent (authors' linear_eval.py); MSE and Pearson r as is.\n")
    return "\n".join(lines) + "\n" + note


def write_results(df: pd.DataFrame, out_dir: str | os.PathLike, name: str = "results") -> dict[str, str]:
    """Write `<name>.parquet` and `<name>.md` atomically; returns their paths."""
    from emotionclip.core.io import atomic_write_parquet, atomic_write_text

    out = Path(out_dir)
    pq_path, md_path = out / f"{name}.parquet", out / f"{name}.md"
    atomic_write_parquet(pq_path, df)
    atomic_write_text(md_path, to_markdown(df))
    return {"parquet": str(pq_path), "markdown": str(md_path)}
