"""Prefect progress artifacts fed by the library's progress trackers
(`emotionclip.core.progress`): the pretrain flow's steps, linear-probe's
per-benchmark feature extraction and probe.

A progress artifact holds a percentage and a description; both are updated in
place (`update_progress_artifact`), at most every `interval_s` seconds per
artifact plus the first and last update, never once per step. A failed API call
(the server restarting, a dropped connection) is logged and skipped: progress is
a display, and must never fail the work it shows.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from typing import Any, Callable, Optional
from uuid import UUID

from emotionclip.core.progress import ProgressEvent, ProgressHook

INTERVAL_S = 5.0  # seconds between two updates of one artifact


def _logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:  # outside a run (a test calling the hook directly): a plain logger
        return logging.getLogger(__name__)


def _duration(seconds: float) -> str:
    return str(dt.timedelta(seconds=int(round(seconds))))


def figures(info: dict[str, Any]) -> str:
    """Extra figures of an event for a description: loss to 4 digits, rates to 3."""
    parts = []
    for key, value in info.items():
        if value is None or key == "epoch":
            continue
        if key.endswith("_per_s"):
            parts.append(f"{value:.3g} {key[:-len('_per_s')]}/s")
        elif isinstance(value, float):
            parts.append(f"{key} {value:.4g}")
        else:
            parts.append(f"{key} {value}")
    return " · ".join(parts)


class ProgressArtifact:
    """One Prefect progress artifact (`key`), created at once at 0 %. `set(percent,
    description)` updates it, at most every `interval_s` unless `force`."""

    def __init__(self, key: str, description: str, *, interval_s: float = INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.key, self.interval_s, self._clock = key, interval_s, clock
        self.log = _logger()
        self.artifact_id: Optional[UUID] = None
        self.percent, self.description = 0.0, description
        self._last = float("-inf")
        self._lock = threading.Lock()
        self._warned = False
        self.failures = 0  # API calls that failed (logged once)
        self._create()

    def _warn(self, what: str, err: BaseException) -> None:
        self.failures += 1
        if not self._warned:  # once: a server that is down would otherwise log every few seconds
            self.log.warning("progress artifact %s: %s failed (%s: %s); the work goes on", self.key, what,
                             type(err).__name__, err)
            self._warned = True

    def _create(self) -> None:
        from prefect.artifacts import create_progress_artifact

        try:
            self.artifact_id = create_progress_artifact(progress=self.percent, key=self.key,
                                                        description=self.description)
        except Exception as e:
            self._warn("create", e)

    def set(self, percent: float, description: str, *, force: bool = False) -> None:
        from prefect.artifacts import update_progress_artifact

        with self._lock:
            self.percent, self.description = max(0.0, min(100.0, percent)), description
            now = self._clock()
            if not force and now - self._last < self.interval_s:
                return
            self._last = now
            if self.artifact_id is None:
                self._create()  # the server was away at the start
                return
            try:
                update_progress_artifact(self.artifact_id, progress=self.percent, description=description)
            except Exception as e:
                self._warn("update", e)


class EventRate:
    """Units per second and time left of one tracker, from its first event on."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._first: tuple[float, float] | None = None

    def __call__(self, event: ProgressEvent) -> tuple[float | None, float | None, float]:
        """(rate, seconds left, seconds since the first event)."""
        now = self._clock()
        if self._first is None:
            self._first = (now, event.completed)
        t0, c0 = self._first
        elapsed = now - t0
        rate = (event.completed - c0) / elapsed if elapsed > 0 and event.completed > c0 else None
        left = (event.total - event.completed) / rate if rate and event.total else None
        return rate, left, elapsed


class StepProgress:
    """A `ProgressHook` for one top-level tracker (the training steps): its
    artifact shows `done/total unit`, the figures (loss, clips/s), the rate and the ETA."""

    def __init__(self, key: str, title: str, *, interval_s: float = INTERVAL_S) -> None:
        self.title = title
        self.artifact = ProgressArtifact(key, f"{title}: starting", interval_s=interval_s)
        self._rate = EventRate()

    def __call__(self, event: ProgressEvent) -> None:
        if event.depth > 0:  # trackers nested in this one (the epoch-end probe) are not this artifact's
            return
        rate, left, elapsed = self._rate(event)
        total = f"/{int(event.total)}" if event.total else ""
        parts = [f"{self.title}: {event.unit.rstrip('s') or 'item'} {int(event.completed)}{total}"]
        if "epoch" in event.info and event.info["epoch"] is not None:
            parts[0] += f" (epoch {event.info['epoch']})"
        extra = figures(dict(event.info))
        if extra:
            parts.append(extra)
        if event.finished:
            parts.append(("done" if event.total and event.completed >= event.total else "stopped")
                         + f" in {_duration(elapsed)}")
        else:
            if rate:
                parts.append(f"{rate:.3g} {event.unit}/s")
            if left is not None:
                parts.append(f"ETA {_duration(left)}")
        fraction = event.fraction
        self.artifact.set(100.0 * fraction if fraction is not None else 0.0, " · ".join(parts),
                          force=event.finished)


class DatasetProgress:
    """One artifact for one benchmark of linear-probe: feature extraction of each
    split (90 %, the splits' fractions averaged: they run at once) then the probe
    (the last 10 %). `split_hook(split)` is the hook of that split's features task."""

    FEATURES_SHARE = 90.0

    def __init__(self, key: str, dataset: str, splits: list[str], *, interval_s: float = INTERVAL_S) -> None:
        self.dataset, self.splits = dataset, list(splits)
        self._parts: dict[str, ProgressEvent] = {}
        self._lock = threading.Lock()
        self._t0 = time.monotonic()
        self.artifact = ProgressArtifact(key, f"{dataset}: waiting for features", interval_s=interval_s)

    def split_hook(self, split: str) -> ProgressHook:
        def hook(event: ProgressEvent) -> None:
            if event.depth > 0:  # a video's frames and detection inside the split
                return
            with self._lock:
                self._parts[split] = event
                self._report(force=event.finished)

        return hook

    def _features_fraction(self) -> float:
        fractions = [(self._parts[s].fraction or 0.0) if s in self._parts else 0.0 for s in self.splits]
        return sum(fractions) / len(fractions) if fractions else 1.0

    def _report(self, force: bool) -> None:
        frac = self._features_fraction()
        parts = []
        for s in self.splits:
            e = self._parts.get(s)
            parts.append(f"{s} {int(e.completed)}/{int(e.total) if e.total else '?'}" if e else f"{s} waiting")
        text = f"{self.dataset}: features " + ", ".join(parts)
        elapsed = time.monotonic() - self._t0
        if 0 < frac < 1 and elapsed > 0:
            text += f" · ETA {_duration(elapsed * (1 - frac) / frac)}"
        self.artifact.set(self.FEATURES_SHARE * frac, text, force=force)

    def probing(self) -> None:
        with self._lock:
            self.artifact.set(self.FEATURES_SHARE, f"{self.dataset}: features done; probing", force=True)

    def done(self, rows: int) -> None:
        with self._lock:
            self.artifact.set(100.0, f"{self.dataset}: done in {_duration(time.monotonic() - self._t0)} "
                                     f"({rows} result rows)", force=True)


# Live DatasetProgress objects of this process, by the key the flow hands its tasks:
# tasks run in the flow's process (Prefect's thread pool) and find theirs here.
_LIVE: dict[str, DatasetProgress] = {}
_LIVE_LOCK = threading.Lock()


def register(token: str, progress: DatasetProgress) -> None:
    with _LIVE_LOCK:
        _LIVE[token] = progress


def unregister(token: str) -> None:
    with _LIVE_LOCK:
        _LIVE.pop(token, None)


def split_hook(token: Optional[str], split: str) -> ProgressHook | None:
    """The hook of `split` of the benchmark registered as `token`; None when it is
    not in this process (a task runner in other processes: that task's progress is
    not shown)."""
    with _LIVE_LOCK:
        p = _LIVE.get(token) if token else None
    return p.split_hook(split) if p is not None else None
