"""Video ids: validated before they ever become part of a path."""

from __future__ import annotations

import re

_VIDEO_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


class InvalidVideoId(ValueError):
    pass


def validate_video_id(video_id: str) -> str:
    """Return `video_id` if it is `[A-Za-z0-9_-]+` (so it cannot escape a folder), else raise."""
    if not isinstance(video_id, str) or not _VIDEO_ID.match(video_id):
        raise InvalidVideoId(f"invalid video id {video_id!r}: must match [A-Za-z0-9_-]+")
    return video_id


def sanitize_video_id(name: str) -> str:
    """Turn an arbitrary name (a local file stem, a non-YouTube id) into a valid id."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "video"
    return cleaned[:128]
