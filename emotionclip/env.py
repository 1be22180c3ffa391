"""Process environment defaults: keep caches and settings out of HOME unless
the user chose otherwise (docs/design.md section 7)."""

from __future__ import annotations

import os
from pathlib import Path

from emotionclip.catalog import REPO_ROOT


def configure_environment(cache_dir: str | os.PathLike | None = None) -> None:
    """Set defaults for Ultralytics' settings dir and matplotlib's config dir (never
    overriding what the user set). Call before importing ultralytics."""
    base = Path(cache_dir or os.environ.get("EMOTIONCLIP_CACHE", REPO_ROOT / ".cache"))
    os.environ.setdefault("YOLO_CONFIG_DIR", str(base / "ultralytics"))
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    os.environ.setdefault("MPLCONFIGDIR", str(base / "matplotlib"))
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
