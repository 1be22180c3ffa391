"""Errors that name the video and the stage, so a run can record them and go on."""

from __future__ import annotations


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
