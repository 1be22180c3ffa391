"""Process environment defaults: keep caches and settings out of HOME unless
the user chose otherwise (docs/design.md section 7)."""

from __future__ import annotations

import os
from pathlib import Path

from emotionclip.core.catalog import REPO_ROOT


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


def import_ultralytics():
    """Import ultralytics after pointing its settings/caches away from HOME and
    turning off auto-install (docs/design.md section 7)."""
    configure_environment()
    import ultralytics

    try:  # no usage analytics from a data pipeline (Ultralytics' "sync" setting), in memory only
        from ultralytics.utils.events import events

        events.enabled = False
    except (ImportError, AttributeError):
        pass
    return ultralytics
