"""Video ids: validated before they ever become part of a path."""

from __future__ import annotations

import hashlib
import re
import unicodedata

MAX_LEN = 128
_VIDEO_ID = re.compile(rf"^[A-Za-z0-9_-]{{1,{MAX_LEN}}}$")
_NOT_ID = re.compile(r"[^A-Za-z0-9_-]+")
_HASH_LEN = 8


class InvalidVideoId(ValueError):
    pass


def validate_video_id(video_id: str) -> str:
    """Return `video_id` if it is `[A-Za-z0-9_-]+` (so it cannot escape a folder), else raise."""
    if not isinstance(video_id, str) or not _VIDEO_ID.match(video_id):
        raise InvalidVideoId(f"invalid video id {video_id!r}: must match [A-Za-z0-9_-]+")
    return video_id


def name_hash(name: str) -> str:
    """Short stable hash of a name (NFC first, so a macOS NFD file name hashes the same)."""
    return hashlib.sha1(unicodedata.normalize("NFC", name).encode("utf-8")).hexdigest()[:_HASH_LEN]


def sanitize_video_id(name: str) -> str:
    """Turn an arbitrary name (a local file stem, a non-YouTube id) into a valid id.

    A valid id is returned unchanged. ASCII separators and punctuation become
    `_` ("My Show: ep 1" -> "My_Show_ep_1"); accents are folded ("Amélie" ->
    "Amelie"). When characters are lost (non-Latin letters, accents, nothing
    left, or a name over 128 characters) a short hash of the original name is
    appended ("家族" -> "video-<hash>", "Friends_s01_家族" -> "Friends_s01-<hash>"),
    so different names do not collapse onto one id."""
    if _VIDEO_ID.match(name):
        return name
    folded = "".join(c for c in unicodedata.normalize("NFKD", name) if not unicodedata.combining(c))
    cleaned = _NOT_ID.sub("_", folded).strip("_")
    lossy = not name.isascii() or not cleaned or len(cleaned) > MAX_LEN
    if not lossy:
        return cleaned
    base = (cleaned or "video")[:MAX_LEN - _HASH_LEN - 1].rstrip("_-") or "video"
    return f"{base}-{name_hash(name)}"
