"""Linear probes on frozen features, the authors' protocol (linear_eval.py):

- classification: `LogisticRegression(solver="sag", max_iter=2000)`, one-vs-rest
  for the multi-label sets (BoLD, EMOTIC, MovieGraphs); C either the authors'
  fixed value (preset) or chosen on the validation split (or a held-out part of
  train when the benchmark has none, as BoLD), then refit on train.
- BoLD VAD: `Ridge(alpha=1)`, R2.
- LIRIS-ACCEDE: `Ridge()` per dimension, predictions smoothed with a
  Savitzky-Golay filter (authors: the whole concatenated test sequence, window
  100, order 3; `smoothing="per_movie"` filters each movie separately,
  `"none"` leaves them raw). Which one ran is recorded in the result.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Sequence

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.multiclass import OneVsRestClassifier

from emotionclip.evaluation import metrics

# Authors' linear_eval.py: EvalArgs.seed (also the classifiers' random_state).
DEFAULT_SEED = 2022
MAX_ITER = 2000
# C grid for the search: half-decades around the authors' presets (2.5 .. 10).
DEFAULT_C_GRID = (0.1, 0.316, 1.0, 3.16, 10.0, 31.6, 100.0)
# Authors' Savitzky-Golay parameters for LIRIS-ACCEDE.
SAVGOL_WINDOW = 100
SAVGOL_ORDER = 3

Smoothing = Literal["sequence", "per_movie", "none"]


@dataclass
class ProbeConfig:
    """How a probe is fitted. `c_mode="preset"` uses the dataset's fixed C (or `c`)."""

    c_mode: Literal["preset", "search"] = "preset"
    c: float | None = None
    c_grid: tuple[float, ...] = DEFAULT_C_GRID
    seed: int = DEFAULT_SEED
    max_iter: int = MAX_ITER
    holdout_fraction: float = 0.2  # share of train used for the C search when there is no val split
    ridge_alpha: float = 1.0
    savgol_window: int = SAVGOL_WINDOW
    savgol_order: int = SAVGOL_ORDER
    smoothing: Smoothing = "sequence"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ProbeResult:
    dataset: str
    c: float | None
    c_source: str  # "preset", "given", "search:<split>"
    search_scores: dict[float, float] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # split -> metric -> value
    notes: dict[str, Any] = field(default_factory=dict)


def make_classifier(task: str, c: float, seed: int = DEFAULT_SEED, max_iter: int = MAX_ITER):
    lr = LogisticRegression(random_state=seed, max_iter=max_iter, C=c, solver="sag", class_weight=None)
    return OneVsRestClassifier(lr) if task == "multilabel" else lr


def fit_scores(task: str, c: float, x_train: np.ndarray, y_train: np.ndarray, x_eval: Sequence[np.ndarray],
               seed: int = DEFAULT_SEED, max_iter: int = MAX_ITER) -> list[np.ndarray]:
    """Fit on train and return class probabilities [N, C] for each eval set."""
    clf = make_classifier(task, c, seed, max_iter)
    with warnings.catch_warnings():
        # sag on small or separable data warns; the authors' runs saw the same.
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.filterwarnings("ignore", message="Label .* is present in all training examples")
        warnings.filterwarnings("ignore", message="Label not .* is present in all training examples")
        clf.fit(x_train, y_train)
    scores = []
    for x in x_eval:
        scores.append(_full_columns(clf, clf.predict_proba(x), task))
    return scores


def _full_columns(clf, p: np.ndarray, task: str) -> np.ndarray:
    """Multiclass probabilities come only for the classes seen in train; place them
    in the dataset's class columns so argmax indices are class indices."""
    if task != "multiclass":
        return p
    classes = np.asarray(clf.classes_, dtype=int)
    out = np.zeros((len(p), int(max(classes.max() + 1, 1))), dtype=p.dtype)
    out[:, classes] = p
    return out


def _pad(scores: np.ndarray, n: int) -> np.ndarray:
    if scores.shape[1] >= n:
        return scores
    return np.pad(scores, ((0, 0), (0, n - scores.shape[1])))


def search_c(dataset: str, task: str, grid: Sequence[float], x_tr: np.ndarray, y_tr: np.ndarray,
             x_val: np.ndarray, y_val: np.ndarray, n_classes: int, seed: int = DEFAULT_SEED,
             max_iter: int = MAX_ITER) -> tuple[float, dict[float, float]]:
    """The C of `grid` with the best primary metric on the validation data (ties: smaller C)."""
    key = metrics.PRIMARY_METRIC[dataset]
    scores: dict[float, float] = {}
    for c in grid:
        (p,) = fit_scores(task, c, x_tr, y_tr, [x_val], seed, max_iter)
        scores[float(c)] = metrics.dataset_metrics(dataset, y_val, _pad(p, n_classes))[key]
    best = max(scores, key=lambda c: (np.nan_to_num(scores[c], nan=-np.inf), -c))
    return best, scores


def holdout_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    idx = rng.permutation(n)
    k = max(1, int(round(n * fraction)))
    return np.sort(idx[k:]), np.sort(idx[:k])


def classification_probe(dataset: str, task: str, n_classes: int, preset_c: float | None,
                         train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray] | None,
                         evals: dict[str, tuple[np.ndarray, np.ndarray]], config: ProbeConfig,
                         val_name: str | None = None) -> ProbeResult:
    """Choose C (preset, given or searched), fit on train, score every eval split."""
    x_tr, y_tr = train
    search_scores: dict[float, float] = {}
    if config.c is not None:
        c, source = float(config.c), "given"
    elif config.c_mode == "preset":
        if preset_c is None:
            raise ValueError(f"{dataset}: no preset C")
        c, source = float(preset_c), "preset"
    else:
        if val is not None:
            xs, ys, xv, yv, source = x_tr, y_tr, val[0], val[1], f"search:{val_name or 'val'}"
        else:
            a, b = holdout_split(len(x_tr), config.holdout_fraction, config.seed)
            xs, ys, xv, yv = x_tr[a], y_tr[a], x_tr[b], y_tr[b]
            source = f"search:holdout{config.holdout_fraction:g}-of-train"
        c, search_scores = search_c(dataset, task, config.c_grid, xs, ys, xv, yv, n_classes,
                                    config.seed, config.max_iter)
    names = list(evals)
    probs = fit_scores(task, c, x_tr, y_tr, [evals[n][0] for n in names], config.seed, config.max_iter)
    result = ProbeResult(dataset=dataset, c=c, c_source=source, search_scores=search_scores)
    for n, p in zip(names, probs):
        result.metrics[n] = metrics.dataset_metrics(dataset, evals[n][1], _pad(p, n_classes))
    return result


def ridge_r2(x_train: np.ndarray, y_train: np.ndarray, x_eval: np.ndarray, y_eval: np.ndarray,
             alpha: float = 1.0) -> float:
    """R2 (percent) of Ridge(alpha) predictions (BoLD VAD, authors' alpha=1)."""
    reg = Ridge(alpha=alpha).fit(x_train, y_train)
    return metrics.r2_percent(y_eval, reg.predict(x_eval))


def smooth(pred: np.ndarray, groups: Sequence[str] | None, window: int, order: int,
           mode: Smoothing) -> tuple[np.ndarray, dict[str, Any]]:
    """Savitzky-Golay along the sample order: over the whole sequence, per movie, or not.
    A sequence shorter than the window is filtered with its own length (odd, > order);
    one too short for that is left as is. Returns the smoothed predictions and a note."""
    from scipy.signal import savgol_filter

    pred = np.asarray(pred, dtype=np.float64)
    note: dict[str, Any] = {"smoothing": mode, "window": window, "order": order}
    if mode == "none":
        return pred, note

    def _filter(seg: np.ndarray) -> np.ndarray:
        w = min(window, len(seg))
        if w < window and w % 2 == 0:
            w -= 1  # shortened windows are kept odd (centred)
        if w <= order:
            return seg
        return savgol_filter(seg, window_length=w, polyorder=order, axis=0)

    if mode == "sequence" or groups is None:
        return _filter(pred), note
    out = pred.copy()
    groups = np.asarray(groups)
    for g in dict.fromkeys(groups.tolist()):
        idx = np.flatnonzero(groups == g)
        out[idx] = _filter(pred[idx])
    return out, note


def regression_probe(dataset: str, names: tuple[str, ...], train: tuple[np.ndarray, np.ndarray],
                     evals: dict[str, tuple[np.ndarray, np.ndarray, Sequence[str]]],
                     config: ProbeConfig) -> ProbeResult:
    """Ridge per target dimension, Savitzky-Golay smoothing, MSE and Pearson r."""
    x_tr, y_tr = train
    result = ProbeResult(dataset=dataset, c=None, c_source="ridge")
    for split, (x, y, groups) in evals.items():
        pred = np.zeros_like(y, dtype=np.float64)
        for i in range(y.shape[1]):
            reg = Ridge(alpha=config.ridge_alpha).fit(x_tr, y_tr[:, i])
            pred[:, i], note = smooth(reg.predict(x), groups, config.savgol_window, config.savgol_order,
                                      config.smoothing)
        result.metrics[split] = metrics.regression_metrics(y, pred, names)
        result.notes = note | {"ridge_alpha": config.ridge_alpha}
    return result
