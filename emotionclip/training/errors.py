"""Errors of training that are the user's to fix (data, files, disk), not bugs.

`emotionclip train` prints a `TrainingInputError` as one line and exits 2; the
message says what is wrong and what to do about it.
"""

from __future__ import annotations

from typing import Sequence


class TrainingInputError(ValueError):
    """What training was given is unusable: missing frame stores, broken manifest
    rows, unreadable checkpoints. The message names the files or clips."""


class BadBatchError(TrainingInputError):
    """A batch's data makes the loss meaningless (non-finite sentiment logits, no
    negative pair left). `clip_ids` are the clips (`video_id:sentence_idx`) at fault."""

    def __init__(self, message: str, clip_ids: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.clip_ids = list(clip_ids)

    def __reduce__(self):  # type: ignore[override]
        # rebuilt from its fields when sent between processes
        return (type(self), (self.message, self.clip_ids))


def name_some(items: Sequence[str], limit: int = 5) -> str:
    """'a, b, c' or 'a, b, c and 7 more' (messages stay one short line)."""
    items = list(items)
    shown = ", ".join(str(x) for x in items[:limit])
    return shown if len(items) <= limit else f"{shown} and {len(items) - limit} more"
