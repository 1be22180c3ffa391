"""The paper's metrics, computed as the authors' linear_eval.py computes them
(scikit-learn, classification metrics and R2 in percent, MSE and Pearson r as is).

- BoLD: macro mAP and macro ROC-AUC over the 26 categories; R2 of VAD (uniform average).
- MovieGraphs: accuracy where the top-1 prediction counts as correct when it is
  among the clip's labels.
- MELD: accuracy and weighted F1.
- EMOTIC: macro mAP and macro ROC-AUC.
- BoLD and EMOTIC also per category (AP and ROC-AUC, appendix Table 5).
- LIRIS-ACCEDE: MSE and Pearson r, valence and arousal separately.

Macro mAP/AUC skip categories that have no positive (or no negative) sample in
the evaluated split, where the score is undefined; on the full benchmarks every
category has both, so this equals scikit-learn's plain call. The number of
categories scored is returned with them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score, average_precision_score, f1_score, mean_squared_error, r2_score, roc_auc_score,
)


def _scorable(y_true: np.ndarray) -> np.ndarray:
    pos = y_true.sum(axis=0)
    return (pos > 0) & (pos < len(y_true))


def mean_average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Macro average precision in percent over the scorable categories."""
    y_true, scores = np.asarray(y_true), np.asarray(scores)
    keep = _scorable(y_true)
    if not keep.any():
        return float("nan")
    return float(average_precision_score(y_true[:, keep], scores[:, keep], average="macro") * 100)


def macro_roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Macro ROC-AUC in percent over the scorable categories."""
    y_true, scores = np.asarray(y_true), np.asarray(scores)
    keep = _scorable(y_true)
    if not keep.any():
        return float("nan")
    return float(roc_auc_score(y_true[:, keep], scores[:, keep], average="macro") * 100)


def r2_percent(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """R2 (uniform average over outputs) in percent, as the authors report BoLD VAD."""
    return float(r2_score(y_true, y_pred, multioutput="uniform_average") * 100)


def top1_in_set_accuracy(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Percent of samples whose highest-scoring class is one of their labels
    (MovieGraphs; authors' `accuracy_from_affect2mm`)."""
    y_true, scores = np.asarray(y_true), np.asarray(scores)
    pred = scores.argmax(axis=1)
    return float((y_true[np.arange(len(pred)), pred] > 0).mean() * 100)


def accuracy_percent(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(accuracy_score(y_true, y_pred) * 100)


def weighted_f1_percent(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(f1_score(y_true, y_pred, average="weighted") * 100)


def mse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(mean_squared_error(y_true, y_pred))


def pearson_r(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.corrcoef(np.asarray(y_true, float), np.asarray(y_pred, float))[0, 1])


def per_category_ap(y_true: np.ndarray, scores: np.ndarray) -> list[float]:
    """Average precision in percent of every category, NaN where it is undefined
    (no positive or no negative sample); the mAP is their mean over the rest."""
    return _per_category(average_precision_score, y_true, scores)


def per_category_auc(y_true: np.ndarray, scores: np.ndarray) -> list[float]:
    """ROC-AUC in percent of every category, NaN where it is undefined."""
    return _per_category(roc_auc_score, y_true, scores)


def _per_category(score_fn, y_true: np.ndarray, scores: np.ndarray) -> list[float]:
    y_true, scores = np.asarray(y_true), np.asarray(scores)
    keep = _scorable(y_true)
    out = [float("nan")] * y_true.shape[1]
    if keep.any():
        vals = score_fn(y_true[:, keep], scores[:, keep], average=None) * 100
        for i, v in zip(np.flatnonzero(keep), np.atleast_1d(vals)):
            out[int(i)] = float(v)
    return out


# Keys of the per-category lists in `multilabel_metrics` (category order of the dataset
# spec); the results table shows them beside appendix Table 5.
PER_CATEGORY = {"mAP": "AP_per_category", "AUC": "AUC_per_category"}


def multilabel_metrics(y_true: np.ndarray, scores: np.ndarray) -> dict[str, float | int | list[float]]:
    return {"mAP": mean_average_precision(y_true, scores), "AUC": macro_roc_auc(y_true, scores),
            "classes_scored": int(_scorable(np.asarray(y_true)).sum()),
            PER_CATEGORY["mAP"]: per_category_ap(y_true, scores), PER_CATEGORY["AUC"]: per_category_auc(y_true, scores)}


def multiclass_metrics(y_true: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    pred = np.asarray(scores).argmax(axis=1)
    return {"accuracy": accuracy_percent(y_true, pred), "weighted_F1": weighted_f1_percent(y_true, pred)}


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray, names: tuple[str, ...]) -> dict[str, float]:
    out: dict[str, float] = {}
    for i, n in enumerate(names):
        out[f"{n}_MSE"] = mse(y_true[:, i], y_pred[:, i])
        out[f"{n}_r"] = pearson_r(y_true[:, i], y_pred[:, i])
    return out


# The metric each benchmark's C search maximises (the paper's headline metric).
PRIMARY_METRIC = {"bold": "mAP", "emotic": "mAP", "moviegraphs": "accuracy", "meld": "weighted_F1"}


def dataset_metrics(dataset: str, y_true: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    """The paper's classification metrics for `dataset` from class scores."""
    if dataset == "moviegraphs":
        return {"accuracy": top1_in_set_accuracy(y_true, scores)}
    if dataset == "meld":
        return multiclass_metrics(y_true, scores)
    if dataset in ("bold", "emotic"):
        return multilabel_metrics(y_true, scores)
    raise KeyError(f"no classification metrics for {dataset!r}")
