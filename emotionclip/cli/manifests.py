"""`emotionclip manifests list|rollback`: the manifest generations kept under the
catalog's manifests folder (`stages.manifests.keep_generations`), and switching
`_manifest.json` back to an older one when a build went wrong."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from emotionclip.cli._common import CatalogOpt, DataRootOpt, ProfileOpt, SetOpt, fail_usage, open_catalog

app = typer.Typer(no_args_is_help=True)


@app.command("list")
def list_(
    catalog: Optional[Path] = CatalogOpt,
    profile: Optional[str] = ProfileOpt,
    data_root: Optional[str] = DataRootOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """The generations, newest first, as JSON (current, clips, videos, fingerprint, restorable)."""
    from emotionclip.core.manifest_store import list_generations

    cat = open_catalog(catalog, profile, data_root, set_)
    typer.echo(json.dumps(list_generations(cat.artifact("manifests")), indent=2))


@app.command("rollback")
def rollback(
    generation: Optional[str] = typer.Argument(None, help="Generation to make current (default: the one before the current)."),
    catalog: Optional[Path] = CatalogOpt,
    profile: Optional[str] = ProfileOpt,
    data_root: Optional[str] = DataRootOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """Point `_manifest.json` at an older generation again (atomically); prints the restored pointer."""
    from emotionclip.core.manifest_store import rollback as _rollback

    cat = open_catalog(catalog, profile, data_root, set_)
    try:
        info = _rollback(cat.artifact("manifests"), generation)
    except (ValueError, OSError) as e:  # no such generation, nothing older, missing files
        fail_usage(str(e))
    typer.echo(json.dumps({k: info.get(k) for k in ("generation", "n_clips", "n_videos", "fingerprint", "created")},
                          indent=2))
