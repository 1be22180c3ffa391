"""Options shared by the command groups: which catalog, profile, data root, overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
import yaml

CatalogOpt = typer.Option(None, "--catalog", "-c", help="Catalog file (default: data_catalog.yaml or $EMOTIONCLIP_CATALOG).")
ProfileOpt = typer.Option(None, "--profile", "-p", help="Model profile from the catalog (paper or tiny).")
DataRootOpt = typer.Option(None, "--data-root", help="Override the catalog's data_root (local folder or fsspec URL).")
SetOpt = typer.Option(None, "--set", help="Override a catalog value, e.g. --set stages.filter.max_neutral=0.3 (repeatable).")


def parse_overrides(pairs: Optional[list[str]]) -> dict:
    """["a.b=1", "c=[x, y]"] -> {"a.b": 1, "c": ["x", "y"]} (values parsed as YAML)."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--set")
        out[key.strip()] = yaml.safe_load(value)
    return out


def open_catalog(catalog: Optional[Path], profile: Optional[str], data_root: Optional[str], sets: Optional[list[str]]):
    """Load the catalog or exit 2 with the error naming the key."""
    from emotionclip.core.catalog import CatalogError, load_catalog

    try:
        return load_catalog(catalog, profile=profile, data_root=data_root, overrides=parse_overrides(sets))
    except CatalogError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
