"""Options shared by the command groups: which catalog, profile, data root, overrides."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, Optional

import typer
import yaml

if TYPE_CHECKING:
    from emotionclip.core.catalog import Catalog

CatalogOpt = typer.Option(None, "--catalog", "-c", help="Catalog file (default: data_catalog.yaml or $EMOTIONCLIP_CATALOG).")
ProfileOpt = typer.Option(None, "--profile", "-p", help="Model profile from the catalog (paper or tiny).")
DataRootOpt = typer.Option(
    None, "--data-root",
    help="Override the catalog's data_root (local folder or fsspec URL). A relative folder given here "
         "is relative to the current directory; a relative data_root in the catalog file is relative "
         "to the catalog's folder.")
SetOpt = typer.Option(None, "--set", help="Override a catalog value, e.g. --set stages.filter.max_neutral=0.3 (repeatable).")


def fail_usage(message: str) -> NoReturn:
    """Print one `error: ...` line and exit 2 (a usage or catalog error, not a crash)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def parse_overrides(pairs: Optional[list[str]]) -> dict[str, object]:
    """["a.b=1", "c=[x, y]"] -> {"a.b": 1, "c": ["x", "y"]} (values parsed as YAML).
    A malformed pair exits 2 with one line naming it."""
    from emotionclip.core.catalog import describe_yaml_error

    out: dict[str, object] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            fail_usage(f"--set {pair!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            fail_usage(f"--set {key.strip()}: value {value!r} is not valid YAML ({describe_yaml_error(e)})")
    return out


def open_catalog(catalog: Optional[Path], profile: Optional[str], data_root: Optional[str], sets: Optional[list[str]],
                 *, writable: bool = False) -> "Catalog":
    """Load the catalog or exit 2 with the error naming the key. `writable`: also make sure
    the data root can be written (created if missing), for the commands that write there."""
    from emotionclip.core.catalog import CatalogError, check_data_root, load_catalog

    overrides = parse_overrides(sets)
    try:
        cat = load_catalog(catalog, profile=profile, data_root=data_root, overrides=overrides)
        if writable:
            check_data_root(cat)
    except CatalogError as e:
        fail_usage(str(e))
    return cat
