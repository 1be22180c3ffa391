"""`emotionclip catalog ...`: show and validate the data catalog."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from emotionclip.cli._common import fail_usage

app = typer.Typer(no_args_is_help=True)


@app.command("show")
def show(
    catalog: Optional[Path] = typer.Option(None, help="Catalog file (default: data_catalog.yaml or $EMOTIONCLIP_CATALOG)."),
    profile: Optional[str] = typer.Option(None, help="Model profile (paper or tiny)."),
) -> None:
    """Print the validated catalog (with defaults filled in) as JSON."""
    from emotionclip.core.catalog import CatalogError, load_catalog

    try:
        cat = load_catalog(catalog, profile=profile)
    except CatalogError as e:
        fail_usage(str(e))
    typer.echo(json.dumps(cat.to_yaml_dict() | {"resolved_data_root": cat.root}, indent=2))


@app.command("validate")
def validate(catalog: Optional[Path] = typer.Argument(None, help="Catalog file.")) -> None:
    """Validate a catalog file; exit 2 with the offending key on error."""
    from emotionclip.core.catalog import CatalogError, load_catalog

    try:
        load_catalog(catalog)
    except CatalogError as e:
        fail_usage(str(e))
    typer.echo("ok")
