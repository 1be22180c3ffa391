"""Every linear-probe number the paper reports, each with its source (table, row, column).

Zhang, Pan, Wang, "Learning Emotion Representations from Verbal and Nonverbal
Communication", CVPR 2023, main paper and supplementary material ("appendix"):

- paper Table 4(a-e): BoLD, MovieGraphs, Emotic, MELD, LIRIS-ACCEDE; the supervised
  rows, the VideoCLIP and X-CLIP linear-probe rows and EmotionCLIP's;
- paper Table 1 (component ablation on BoLD) and Table 3 (encoder ablation on BoLD);
- appendix Table 3 (Emotic per-category AP: Kosti et al., EmotiCon, EmotionCLIP);
- appendix Table 5 (BoLD and Emotic per-category AP and AUC of EmotionCLIP).

Units are the paper's: mAP, AP, AUC, accuracy and weighted F1 in percent, BoLD R2 as a
fraction (0.133), MSE as is. A "-" in the paper (no number) has no entry here.

    from emotionclip.evaluation.paper import paper_value, paper_table
    paper_value("bold", "val", "mAP")                     # 22.51, paper Table 4(a)
    paper_value("emotic", "test", "AP", category="Pain")  # 16.73, appendix Table 5
    paper_table("4a")                                     # a DataFrame, one row per method

Splits: BoLD's test labels are not public, so the paper's BoLD numbers are on the
validation split; Emotic, MELD and LIRIS-ACCEDE numbers are on the test split;
MovieGraphs has both (Val Acc, Test Acc).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

PERCENT, FRACTION, MSE_UNIT = "%", "fraction", "MSE"


@dataclass(frozen=True)
class PaperValue:
    """One number of one table cell, where it is printed and what it measures."""

    table: str  # "Table 4(a)", "Table 1", "appendix Table 5"
    row: str  # the row label as printed ("*Affect2MM [54]", "+ SAP & SNCE", "Affection")
    column: str  # the column header as printed ("mAP ↑", "BoLD [4] AP")
    value: float
    unit: str  # PERCENT, FRACTION or MSE_UNIT
    dataset: str  # bold, moviegraphs, emotic, meld, liris (this repository's names)
    split: str  # the split the number is on
    metric: str  # this repository's metric name: mAP, AUC, R2, accuracy, weighted_F1, valence_MSE, AP, ...
    method: str  # "EmotionCLIP", "VideoCLIP", "X-CLIP", "Kosti et al.", "EmotionCLIP + SAAM", ...
    group: str = ""  # "supervised", "linear-eval", "ablation"
    category: str | None = None  # per-category cells (appendix Tables 3 and 5)
    multimodal: bool = False  # marked "*" in Table 4: audio and text inputs as well
    note: str = ""

    @property
    def source(self) -> str:
        return f"paper {self.table}, row {self.row!r}, column {self.column!r}"


# --- Table 4 -----------------------------------------------------------------------------

# (table letter, dataset, caption, [(printed column, split, metric, unit)], rows).
# Row: (printed label, method, group, values in column order; None = "-").
_T4: list[tuple[str, str, str, list[tuple[str, str, str, str]], list[tuple[str, str, str, tuple]]]] = [
    ("a", "bold", "BoLD [45]",
     [("mAP ↑", "val", "mAP", PERCENT), ("AUC ↑", "val", "AUC", PERCENT), ("R2 ↑", "val", "R2", FRACTION)],
     [("ST-GCN [94]", "ST-GCN", "supervised", (12.63, 55.96, 0.044)),
      ("TSN [81]", "TSN", "supervised", (17.02, 62.70, 0.095)),
      ("Filntisis et al. [21]", "Filntisis et al.", "supervised", (16.56, 62.66, 0.092)),
      ("Pikoulis et al. [59]", "Pikoulis et al.", "supervised", (19.29, 66.82, 0.149)),
      ("VideoCLIP [87]", "VideoCLIP", "linear-eval", (11.19, 51.23, -5.11)),
      ("X-CLIP [55]", "X-CLIP", "linear-eval", (13.26, 56.86, -0.03)),
      ("EmotionCLIP", "EmotionCLIP", "linear-eval", (22.51, 69.30, 0.133))]),
    ("b", "moviegraphs", "MovieGraphs [77]",
     [("Val Acc ↑", "val", "accuracy", PERCENT), ("Test Acc ↑", "test", "accuracy", PERCENT)],
     [("EmotionNet [84]", "EmotionNet", "supervised", (35.60, 27.90)),
      ("*Affect2MM [54]", "Affect2MM", "supervised", (39.88, 30.58)),
      ("VideoCLIP [87]", "VideoCLIP", "linear-eval", (29.91, 23.44)),
      ("X-CLIP [55]", "X-CLIP", "linear-eval", (29.06, 23.58)),
      ("EmotionCLIP", "EmotionCLIP", "linear-eval", (41.60, 32.35))]),
    ("c", "emotic", "Emotic [29]",
     [("mAP ↑", "test", "mAP", PERCENT), ("AUC ↑", "test", "AUC", PERCENT)],
     [("CAER-Net [34]", "CAER-Net", "supervised", (20.84, None)),
      ("Affective Graph [96]", "Affective Graph", "supervised", (28.42, None)),
      ("Fusion Model [29]", "Fusion Model", "supervised", (29.45, None)),
      ("EmotiCon (GCN) [53]", "EmotiCon (GCN)", "supervised", (32.03, None)),
      ("EmotiCon (Depth) [53]", "EmotiCon (Depth)", "supervised", (35.48, None)),
      ("VideoCLIP [87]", "VideoCLIP", "linear-eval", (19.92, 56.31)),
      ("X-CLIP [55]", "X-CLIP", "linear-eval", (22.80, 61.31)),
      ("EmotionCLIP", "EmotionCLIP", "linear-eval", (32.91, 71.41))]),
    ("d", "meld", "MELD [60]",
     [("Acc ↑", "test", "accuracy", PERCENT), ("W. F1 ↑", "test", "weighted_F1", PERCENT)],
     [("M2FNet (Visual) [12]", "M2FNet (Visual)", "supervised", (45.63, 32.44)),
      ("*M2FNet [12]", "M2FNet", "supervised", (67.85, 66.71)),
      ("VideoCLIP [87]", "VideoCLIP", "linear-eval", (45.19, 32.06)),
      ("X-CLIP [55]", "X-CLIP", "linear-eval", (38.31, 32.46)),
      ("EmotionCLIP", "EmotionCLIP", "linear-eval", (48.28, 34.59))]),
    ("e", "liris", "Liris-Accede [5]",
     [("V. MSE ↓", "test", "valence_MSE", MSE_UNIT), ("A. MSE ↓", "test", "arousal_MSE", MSE_UNIT)],
     [("Quan et al. [61]", "Quan et al.", "supervised", (0.115, 0.171)),
      ("Ko et al. [28]", "Ko et al.", "supervised", (0.102, 0.149)),
      ("*CERTH-ITI [4]", "CERTH-ITI", "supervised", (0.117, 0.138)),
      ("*THUHCSI [25]", "THUHCSI", "supervised", (0.092, 0.140)),
      ("*Yi et al. [91]", "Yi et al.", "supervised", (0.090, 0.136)),
      ("*GLA [75]", "GLA", "supervised", (0.084, 0.133)),
      ("*Zhao et al. [95]", "Zhao et al.", "supervised", (0.071, 0.137)),
      ("*Affect2MM [54]", "Affect2MM", "supervised", (0.068, 0.128)),
      ("VideoCLIP [87]", "VideoCLIP", "linear-eval", (0.142, 0.151)),
      ("X-CLIP [55]", "X-CLIP", "linear-eval", (0.133, 0.246)),
      ("EmotionCLIP", "EmotionCLIP", "linear-eval", (0.096, 0.155))]),
]
# Every other R2 in the paper is a fraction near 0.1; this one is printed as is and
# may be a percentage (-0.0511) left unconverted. Kept as printed.
_VIDEOCLIP_R2_NOTE = "printed as -5.11; every other R2 in the paper is a fraction, this one may be in percent"

# --- Table 1 and Table 3 (BoLD validation split) -------------------------------------------

# Table 1: (row, ablation name in emotionclip.training.ablations, mAP, AUC, R2).
_T1 = [
    ("EmotionCLIP (vanilla)", "vanilla", 21.97, 68.85, 0.130),
    ("+ SAAM", "saam", 21.53, 68.56, 0.137),
    ("+ SAP", "sap", 22.28, 69.06, 0.131),
    ("+ SAP & SNCE", "sap-snce", 22.51, 69.30, 0.133),
]
# The differences to the vanilla row as Table 1 prints them (mAP, AUC, R2).
TABLE1_PRINTED_DELTAS: dict[str, tuple[float, float, float]] = {
    "+ SAAM": (-0.44, -0.29, 0.007),
    "+ SAP": (0.31, 0.21, 0.001),
    "+ SAP & SNCE": (0.54, 0.45, 0.003),
}

# Table 3: (text, frame, temporal marks as printed, ablation name, mAP, AUC).
# ✓ trainable, pre-trained; ✗ frozen, pre-trained; - trainable, random; ◦ no parameters.
_T3 = [
    ("✓", "✓", "-", "sap-snce", 22.51, 69.30),
    ("-", "✓", "-", "text-random", 12.43, 54.96),
    ("-", "-", "-", "all-random", 11.02, 50.28),
    ("✗", "✓", "-", "text-frozen", 13.40, 57.38),
    ("✗", "✗", "-", "text-frame-frozen", 18.43, 65.08),
    ("✓", "✓", "◦", "temporal-mean", 21.17, 68.74),
]
# The relative change to the first row as Table 3 prints it, in percent (mAP, AUC).
# They do not always follow from the rounded cells (-5.9% where those give -5.95%,
# -6.0% where they give -6.09%): presumably computed before rounding.
TABLE3_PRINTED_CHANGE: dict[str, tuple[float, float]] = {
    "text-random": (-45, -21), "all-random": (-51, -27), "text-frozen": (-40, -17),
    "text-frame-frozen": (-18, -6.0), "temporal-mean": (-5.9, -0.8),
}

# --- appendix Tables 3 and 5 (per category) -------------------------------------------------

# Alphabetical, as both appendix tables print them.
CATEGORIES: tuple[str, ...] = (
    "Affection", "Anger", "Annoyance", "Anticipation", "Aversion", "Confidence", "Disapproval",
    "Disconnection", "Disquietment", "Doubt/Confusion", "Embarrassment", "Engagement", "Esteem",
    "Excitement", "Fatigue", "Fear", "Happiness", "Pain", "Peace", "Pleasure", "Sadness",
    "Sensitivity", "Suffering", "Surprise", "Sympathy", "Yearning",
)
# appendix Table 3, Emotic AP: (Kosti et al. [3], EmotiCon [6], EmotionCLIP) per category.
_A3 = [
    (27.85, 36.78, 45.81), (9.49, 14.92, 26.67), (14.06, 18.45, 21.94), (58.64, 68.12, 58.07),
    (7.48, 16.48, 10.55), (78.35, 59.23, 76.94), (14.97, 21.21, 19.23), (21.32, 25.17, 29.44),
    (16.89, 16.41, 21.82), (29.63, 33.15, 22.70), (3.18, 11.25, 2.86), (87.53, 90.45, 87.79),
    (17.73, 22.23, 18.58), (77.16, 82.21, 71.05), (9.70, 19.15, 20.21), (14.14, 11.32, 12.08),
    (58.26, 68.21, 78.44), (8.94, 12.54, 16.73), (21.56, 35.14, 29.67), (45.46, 61.34, 50.23),
    (19.66, 26.15, 43.01), (9.28, 9.21, 9.53), (18.84, 22.81, 43.96), (18.81, 14.21, 10.70),
    (14.71, 24.63, 17.23), (8.34, 12.23, 10.29),
]
_A3_MAP = (27.38, 32.03, 32.91)  # its "mAP" row
_A3_METHODS = (("Kosti et al. [3]", "Kosti et al.", "supervised"), ("Emoticon [6]", "EmotiCon", "supervised"),
               ("EmotionCLIP", "EmotionCLIP", "linear-eval"))
# The EmotiCon column averages to 32.038, printed 32.03 (Table 4(c) prints the same 32.03
# for "EmotiCon (GCN)"): kept as printed.
_A3_NOTE = {"EmotiCon": "the column's categories average to 32.038; printed 32.03"}

# appendix Table 5: (BoLD AP, BoLD AUC, Emotic AP, Emotic AUC) per category.
_A5 = [
    (42.06, 84.53, 45.81, 79.47), (15.24, 71.93, 26.67, 76.76), (18.78, 61.56, 21.94, 74.04),
    (32.23, 60.45, 58.07, 61.94), (9.08, 63.45, 10.55, 72.09), (40.33, 66.63, 76.94, 76.51),
    (14.12, 57.62, 19.23, 79.77), (11.08, 56.86, 29.44, 71.33), (23.75, 68.04, 21.82, 63.73),
    (22.82, 63.28, 22.70, 60.82), (2.29, 70.70, 2.86, 56.76), (44.54, 64.34, 87.79, 70.34),
    (20.66, 63.67, 18.58, 57.24), (28.04, 73.08, 71.05, 73.57), (13.17, 71.04, 20.21, 68.88),
    (19.41, 71.74, 12.08, 73.06), (48.59, 80.53, 78.44, 78.60), (14.58, 77.17, 16.73, 84.11),
    (28.09, 65.09, 29.67, 70.58), (37.87, 76.60, 50.23, 69.87), (25.85, 82.49, 43.01, 85.05),
    (14.81, 72.48, 9.53, 74.28), (26.61, 80.15, 43.96, 88.04), (11.91, 63.62, 10.70, 59.26),
    (12.60, 67.02, 17.23, 68.59), (6.66, 67.65, 10.29, 61.88),
]
_A5_AVERAGE = (22.51, 69.30, 32.91, 71.41)
_A5_COLUMNS = (("BoLD [4] AP", "bold", "val", "AP"), ("BoLD [4] AUC", "bold", "val", "AUC"),
               ("Emotic [3] AP", "emotic", "test", "AP"), ("Emotic [3] AUC", "emotic", "test", "AUC"))


def _build() -> tuple[PaperValue, ...]:
    out: list[PaperValue] = []
    for letter, dataset, _, cols, rows in _T4:
        for label, method, group, values in rows:
            for (col, split, metric, unit), v in zip(cols, values):
                if v is None:
                    continue
                note = _VIDEOCLIP_R2_NOTE if (dataset, method, metric) == ("bold", "VideoCLIP", "R2") else ""
                out.append(PaperValue(f"Table 4({letter})", label, col, v, unit, dataset, split, metric, method,
                                      group, multimodal=label.startswith("*"), note=note))
    for label, ablation, *values in _T1:
        method = label if label.startswith("EmotionCLIP") else f"EmotionCLIP {label}"
        for (col, metric, unit), v in zip((("mAP", "mAP", PERCENT), ("AUC", "AUC", PERCENT), ("R2", "R2", FRACTION)),
                                          values):
            out.append(PaperValue("Table 1", label, col, v, unit, "bold", "val", metric, method,
                                  "ablation", note=f"ablation {ablation}"))
    for text, frame, temporal, ablation, *values in _T3:
        label = f"text {text}, frame {frame}, temporal {temporal}"
        for (col, metric), v in zip((("mAP", "mAP"), ("AUC", "AUC")), values):
            out.append(PaperValue("Table 3", label, col, v, PERCENT, "bold", "val", metric,
                                  f"EmotionCLIP ({label})", "ablation", note=f"ablation {ablation}"))
    for cat, row in zip(CATEGORIES, _A5):
        for (col, dataset, split, metric), v in zip(_A5_COLUMNS, row):
            out.append(PaperValue("appendix Table 5", cat, col, v, PERCENT, dataset, split, metric, "EmotionCLIP",
                                  "linear-eval", category=cat))
    for (col, dataset, split, metric), v in zip(_A5_COLUMNS, _A5_AVERAGE):
        out.append(PaperValue("appendix Table 5", "Average", col, v, PERCENT, dataset, split,
                              "m" + metric if metric == "AP" else metric, "EmotionCLIP", "linear-eval"))
    for cat, row in zip(CATEGORIES, _A3):
        for (col, method, group), v in zip(_A3_METHODS, row):
            out.append(PaperValue("appendix Table 3", cat, col, v, PERCENT, "emotic", "test", "AP", method, group,
                                  category=cat))
    for (col, method, group), v in zip(_A3_METHODS, _A3_MAP):
        out.append(PaperValue("appendix Table 3", "mAP", col, v, PERCENT, "emotic", "test", "mAP", method, group,
                              note=_A3_NOTE.get(method, "")))
    return tuple(out)


VALUES: tuple[PaperValue, ...] = _build()

# Table names: canonical key -> the caption as the paper numbers it.
TABLES: dict[str, str] = {
    "4a": "Table 4(a)", "4b": "Table 4(b)", "4c": "Table 4(c)", "4d": "Table 4(d)", "4e": "Table 4(e)",
    "1": "Table 1", "3": "Table 3", "A3": "appendix Table 3", "A5": "appendix Table 5",
}
_GROUPS = {"4": ("4a", "4b", "4c", "4d", "4e")}
_ALIASES = {"5": "A5", "appendix-table3": "A3", "appendix-table5": "A5"}
CAPTIONS = {
    "Table 4(a)": "BoLD, validation split", "Table 4(b)": "MovieGraphs", "Table 4(c)": "Emotic, test split",
    "Table 4(d)": "MELD, test split", "Table 4(e)": "Liris-Accede, test split",
    "Table 1": "component-wise analysis on BoLD (validation split)",
    "Table 3": "encoder ablation on BoLD (validation split); ✓ trainable, pre-trained; ✗ frozen, pre-trained; "
               "- trainable, random initialisation; ◦ no parameters",
    "appendix Table 3": "Emotic per-category AP (test split)",
    "appendix Table 5": "BoLD (validation split) and Emotic (test split) per-category AP and AUC of EmotionCLIP",
}


def table_keys(name: str) -> tuple[str, ...]:
    """The canonical keys ("4a", "A5", ...) a table name stands for: "4" is Table 4(a-e);
    "5" is appendix Table 5 (the main paper has no Table 5); "Table 4(a)" and
    "appendix Table 3" as the paper prints them work too."""
    key = name.strip()
    for k, caption in TABLES.items():
        if key.lower() == caption.lower():
            return (k,)
    low = key.lower().removeprefix("table").strip().replace("(", "").replace(")", "")
    low = _ALIASES.get(low, low).lower()
    if low in _GROUPS:
        return _GROUPS[low]
    for k in TABLES:
        if low == k.lower():
            return (k,)
    raise KeyError(f"unknown paper table {name!r}; choose one of {['4', *TABLES]}")


def paper_values(dataset: str | None = None, split: str | None = None, metric: str | None = None,
                 method: str | None = None, category: str | None = None, table: str | None = None
                 ) -> list[PaperValue]:
    """Every entry matching the given fields (None = any; `category` None matches every
    entry, per-category or not)."""
    tables = {TABLES[k] for k in table_keys(table)} if table else None
    return [v for v in VALUES
            if (dataset is None or v.dataset == dataset) and (split is None or v.split == split)
            and (metric is None or v.metric == metric) and (method is None or v.method == method)
            and (category is None or v.category == category) and (tables is None or v.table in tables)]


def paper_entry(dataset: str, split: str, metric: str, method: str = "EmotionCLIP", category: str | None = None,
                table: str | None = None) -> PaperValue | None:
    """The paper's cell for (dataset, split, metric) of `method`, None when the paper
    reports none. Aggregate metrics come from Table 4 first; a category's AP or AUC
    from appendix Table 5 (appendix Table 3 repeats Emotic's AP, with the same values)."""
    for v in paper_values(dataset, split, metric, method, category, table):
        if v.category == category:
            return v
    return None


def paper_value(dataset: str, split: str, metric: str, method: str = "EmotionCLIP", category: str | None = None,
                table: str | None = None) -> float | None:
    """The number of `paper_entry`, or None."""
    entry = paper_entry(dataset, split, metric, method, category, table)
    return None if entry is None else entry.value


def digits(unit: str) -> int:
    """The decimals the paper prints for a unit."""
    return 2 if unit == PERCENT else 3


def _wide(key: str) -> pd.DataFrame:
    caption = TABLES[key]
    vals = [v for v in VALUES if v.table == caption]
    columns = list(dict.fromkeys(v.column for v in vals))
    datasets = {v.dataset for v in vals}
    records: dict[str, dict[str, Any]] = {}
    for v in vals:
        rec = records.setdefault(v.row, {"table": caption, "row": v.row})
        if len(datasets) == 1:  # appendix Table 5 has BoLD and Emotic columns
            rec["dataset"] = v.dataset
        if not key.startswith("A"):  # the appendix tables' rows are categories, their columns methods
            rec.update(method=v.method, group=v.group)
        if key.startswith("4"):
            rec["multimodal"] = v.multimodal
        rec[v.column] = v.value
    if key in ("1", "3"):
        for rec in records.values():
            row_vals = [v for v in vals if v.row == rec["row"]]
            rec["ablation"] = row_vals[0].note.removeprefix("ablation ")
        if key == "3":
            for (text, frame, temporal, *_), rec in zip(_T3, records.values()):
                rec.update({"text encoder": text, "frame encoder": frame, "temporal encoder": temporal})
    df = pd.DataFrame(list(records.values()))
    lead = [c for c in df.columns if c not in columns]
    return df[lead + columns]


def paper_table(name: str) -> pd.DataFrame:
    """A paper table as printed: one row per printed row, one column per printed column
    (NaN where the paper prints "-"), plus table, row, dataset (where the table has one),
    method and group (not for the appendix tables, whose columns are the methods or
    datasets), multimodal for Table 4, the ablation name for Tables 1 and 3. "4" stacks
    4(a-e)."""
    frames = [_wide(k) for k in table_keys(name)]
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def records(name: str | None = None) -> list[dict[str, Any]]:
    """The entries of one table (every table when None) as plain dicts, `source` included."""
    keys = table_keys(name) if name else tuple(TABLES)
    tables = {TABLES[k] for k in keys}
    return [{**asdict(v), "source": v.source} for v in VALUES if v.table in tables]


def _cell(v: Any, d: int) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.{d}f}"
    return "" if v is None else str(v)


def table_markdown(name: str) -> str:
    """The table(s) as Markdown, in the paper's units and printed precision."""
    out: list[str] = []
    for key in table_keys(name):
        caption = TABLES[key]
        df = _wide(key)
        units = {v.column: v.unit for v in VALUES if v.table == caption}
        label_cols = ["row"] + (["group"] if key.startswith("4") else [])
        if key == "3":
            label_cols = ["text encoder", "frame encoder", "temporal encoder"]
        cols = label_cols + list(units)
        out.append(f"### paper {caption}: {CAPTIONS[caption]}\n")
        out.append("| " + " | ".join(cols) + " |")
        out.append("|" + "---|" * len(cols))
        for rec in df.to_dict("records"):
            out.append("| " + " | ".join(_cell(rec.get(c), digits(units.get(c, PERCENT))) for c in cols) + " |")
        notes = [f"{v.row}, {v.column}: {v.note}" for v in VALUES if v.table == caption and v.note
                 and not v.note.startswith("ablation ")]
        if any(v.multimodal for v in VALUES if v.table == caption):
            notes.insert(0, "rows marked * use audio and text inputs as well")
        out.extend([""] + [f"- {n}" for n in notes] + [""] if notes else [""])
    return "\n".join(out)


def table_json(name: str | None = None) -> str:
    return json.dumps(records(name), indent=2, ensure_ascii=False)
