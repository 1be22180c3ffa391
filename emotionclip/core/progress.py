"""Progress of long work (download, frames, detection, training steps, features),
reported through one tiny hook so the library stays free of any display.

A piece of work opens a `Tracker` (`track(...)`) and advances it; each change
reaches a `ProgressHook`, a plain callable taking a `ProgressEvent` (absolute
counts, so a consumer that drops events, or samples them every few seconds,
still shows the right numbers). Without a hook nothing happens beyond an
attribute check per call. The hook is passed explicitly (`progress=` of the
functions that report) or set for a block of code with `use(hook)` (a context
variable: the stage functions reached through the registry, or training reached
through `run_training`, pick it up without every caller threading it through).

Consumers: the `emotionclip` command draws `rich` bars (`emotionclip.cli._common`),
the Prefect flows update progress artifacts (`tasks/progress.py`). A tracker opened
while another is open (detection inside feature extraction, the epoch-end probe
inside training) has `depth` > 0: consumers show it while it runs, or ignore it.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import json
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

__all__ = ["ProgressEvent", "ProgressHook", "Tracker", "Throttle", "track", "use", "current", "follow_jsonl"]


@dataclass(frozen=True)
class ProgressEvent:
    """One piece of work's state. `id`: unique per tracker in this process (two
    runs of the same stage are two bars); `completed` and `total` in `unit`s
    (`total` None: not known yet); `info`: extra figures (loss, clips_per_s, ...)."""

    id: int
    description: str
    completed: float
    total: float | None
    unit: str
    finished: bool = False
    depth: int = 0
    info: Mapping[str, Any] = field(default_factory=dict)

    @property
    def fraction(self) -> float | None:
        """completed / total in [0, 1], or None while the total is unknown."""
        if not self.total:
            return 1.0 if self.finished else None
        return min(1.0, max(0.0, self.completed / self.total))


ProgressHook = Callable[[ProgressEvent], None]

_HOOK: contextvars.ContextVar[ProgressHook | None] = contextvars.ContextVar("emotionclip_progress_hook", default=None)
_DEPTH: contextvars.ContextVar[int] = contextvars.ContextVar("emotionclip_progress_depth", default=0)
_IDS = itertools.count(1)


def current() -> ProgressHook | None:
    """The hook set by the innermost `use(...)`, or None."""
    return _HOOK.get()


@contextlib.contextmanager
def use(hook: ProgressHook | None) -> Iterator[None]:
    """Report the progress of everything inside the block to `hook` (None: to nobody)."""
    token = _HOOK.set(hook)
    try:
        yield
    finally:
        _HOOK.reset(token)


class Tracker:
    """One piece of work's progress. Events go to the hook at most every
    `min_interval_s` (a frame loop calls `advance` thousands of times a second),
    except the first, a change of total, and the last (`close`), which always go."""

    def __init__(self, hook: ProgressHook | None, description: str, total: float | None = None,
                 unit: str = "", *, completed: float = 0, min_interval_s: float = 0.1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.hook = hook
        self.description = description
        self.total = total
        self.unit = unit
        self.completed = completed
        self.info: dict[str, Any] = {}
        self.finished = False
        self.min_interval_s = min_interval_s
        self._clock = clock
        self._last = float("-inf")
        self.id = next(_IDS)
        self.depth = _DEPTH.get()
        self._token: contextvars.Token | None = None
        if hook is not None:
            self._emit(force=True)

    def _emit(self, force: bool = False) -> None:
        if self.hook is None:
            return
        now = self._clock()
        if not force and now - self._last < self.min_interval_s:
            return
        self._last = now
        try:
            self.hook(ProgressEvent(self.id, self.description, self.completed, self.total, self.unit,
                                    self.finished, self.depth, dict(self.info)))
        except Exception:  # a display must never stop the work it shows
            import logging

            logging.getLogger(__name__).warning("progress hook failed; progress is no longer reported",
                                                exc_info=True)
            self.hook = None

    def advance(self, n: float = 1, **info: Any) -> None:
        """`n` more units done; `info` replaces those extra figures."""
        self.completed += n
        if self.hook is None:
            return
        if info:
            self.info.update(info)
        self._emit()

    def update(self, *, completed: float | None = None, total: float | None = None,
               description: str | None = None, **info: Any) -> None:
        """Set the absolute count, the total or the description (a first total and a
        new description force an event; a total estimate that keeps moving does not)."""
        force = False
        if completed is not None:
            self.completed = completed
        if total is not None and total != self.total:
            self.total, force = total, force or self.total is None
        if description is not None and description != self.description:
            self.description, force = description, True
        self.info.update(info)
        self._emit(force=force)

    def close(self, complete: bool = True) -> None:
        """The last event. `complete`: the work is done, so the final count is the
        total (an estimate was off, or there was none); False (an error stopped it):
        the total stays, showing how far it got."""
        if self.finished:
            return
        self.finished = True
        if self._token is not None:
            try:
                _DEPTH.reset(self._token)
            except ValueError:  # closed in another context than opened: nothing to restore
                pass
            self._token = None
        if complete or self.total is None or self.completed > self.total:
            self.total = self.completed
        self._emit(force=True)

    def __enter__(self) -> "Tracker":
        self._token = _DEPTH.set(self.depth + 1)
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.close(complete=exc_type is None)


def track(description: str, total: float | None = None, unit: str = "", *,
          hook: ProgressHook | None = None, completed: float = 0, min_interval_s: float = 0.1) -> Tracker:
    """A tracker reporting to `hook`, or else to the hook of the enclosing `use(...)`;
    with neither, a tracker whose methods do nothing. Use it as a context manager,
    so the last event goes out however the block ends."""
    return Tracker(hook if hook is not None else _HOOK.get(), description, total, unit,
                   completed=completed, min_interval_s=min_interval_s)


class Throttle:
    """Wrap a hook so it sees each tracker at most every `interval_s` seconds, plus
    its first and last event (a remote consumer: one API call per few seconds, not
    per step). Trackers deeper than `max_depth` are dropped."""

    def __init__(self, hook: ProgressHook, interval_s: float = 5.0, max_depth: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.hook, self.interval_s, self.max_depth, self._clock = hook, interval_s, max_depth, clock
        self._last: dict[int, float] = {}

    def __call__(self, event: ProgressEvent) -> None:
        if self.max_depth is not None and event.depth > self.max_depth:
            return
        now = self._clock()
        last = self._last.get(event.id)
        if event.finished:
            self._last.pop(event.id, None)
        elif last is not None and now - last < self.interval_s:
            return
        else:
            self._last[event.id] = now
        self.hook(event)


@contextlib.contextmanager
def follow_jsonl(path: str | os.PathLike, tracker: Tracker, *, count_key: str = "step",
                 info_keys: tuple[str, ...] = (), interval_s: float = 2.0) -> Iterator[Tracker]:
    """While the block runs (another process appends JSON lines to `path`: the
    ranks of a torchrun training write `metrics.jsonl`), poll the file every
    `interval_s` and set `tracker` from its newest line: `count_key` as the count,
    `info_keys` as extra figures. Closes the tracker at the end (complete when the
    block ended without an error). Unreadable lines and files are skipped."""
    stop = threading.Event()
    state = {"offset": 0}

    def poll() -> None:
        try:
            size = os.path.getsize(path)
        except OSError:
            return
        if size < state["offset"]:  # rewritten (a resume truncates it): read it again
            state["offset"] = 0
        try:
            with open(path, "rb") as f:
                f.seek(state["offset"])
                data = f.read()
        except OSError:
            return
        end = data.rfind(b"\n") + 1  # only whole lines: the writer may be mid-line
        state["offset"] += end
        for line in reversed(data[:end].splitlines()):
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and isinstance(row.get(count_key), (int, float)):
                tracker.update(completed=row[count_key], **{k: row.get(k) for k in info_keys})
                return

    def loop() -> None:
        while not stop.wait(interval_s):
            poll()

    thread = threading.Thread(target=loop, name="progress-follow", daemon=True)
    thread.start()
    ok = False
    try:
        yield tracker
        ok = True
    finally:
        stop.set()
        thread.join(timeout=interval_s + 5)
        poll()
        tracker.close(complete=ok)
