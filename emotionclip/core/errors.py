"""Errors that name the video and the stage, so a run can record them and go on."""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class StageError(RuntimeError):
    """A stage failed for one video. `str()` names both."""

    def __init__(self, stage: str, video_id: str | None, message: str):
        self.stage = stage
        self.video_id = video_id
        self.message = message
        where = f"video {video_id}" if video_id else "run"
        super().__init__(f"[{stage}] {where}: {message}")

    def __reduce__(self):
        # rebuilt from its fields: the process and Dask task runners send errors between processes
        return (type(self), (self.stage, self.video_id, self.message))


class ModelNotAvailable(RuntimeError):
    """Model weights are not available offline; the message says how to fetch them."""


def pooled_or_each(run: Callable[[list[T]], Sequence[R]], items: list[T]) -> list[R | BaseException]:
    """`run(items)` in one call (model batches filled across the items); if that call
    fails, each item alone, so the error lands on the item that causes it and the
    others still get their results. A single item's failure is raised."""
    try:
        return list(run(items))
    except Exception:
        if len(items) == 1:
            raise
    out: list[R | BaseException] = []
    for item in items:
        try:
            out.append(run([item])[0])
        except Exception as e:
            out.append(e)
    return out
