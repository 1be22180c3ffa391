"""`emotionclip stage <stage> ...`: run one stage of build-tv-dataset without a
server, reading and writing the catalog's layout. This is how users debug a
single task; the Prefect tasks call the very same functions. The commands and
their help come from the stage registry (`emotionclip.stages.registry.STAGES`):
one generic command per per-video stage, and the dataset-level stages (search,
download, manifests, card) with their own options.

Long stages draw progress bars on stderr (download bytes, frames written, frames
detected: `emotionclip.core.progress`) when it is a terminal, or always with
EMOTIONCLIP_PROGRESS=1; stdout stays the JSON summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from emotionclip.cli._common import CatalogOpt, DataRootOpt, ProfileOpt, SetOpt, fail_usage, progress_display
from emotionclip.cli._common import open_catalog as _open_catalog
from emotionclip.stages.registry import STAGES

if TYPE_CHECKING:
    from emotionclip.core.catalog import Catalog

app = typer.Typer(no_args_is_help=True)


def open_catalog(catalog: Optional[Path], profile: Optional[str], data_root: Optional[str],
                 sets: Optional[list[str]]) -> "Catalog":
    """Every command of this group writes under the data root: check it can (exit 2 with
    one line naming the root), rather than fail with an OSError inside the stage."""
    return _open_catalog(catalog, profile, data_root, sets, writable=True)


def _emit(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def _fail(err: Exception) -> None:
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(1)


def _video_stage(name: str):
    def command(
        video_id: str = typer.Option(..., "--video-id", "-v", help="Video id under the data root."),
        force: bool = typer.Option(False, help="Re-run even if the output is up to date."),
        catalog: Optional[Path] = CatalogOpt,
        profile: Optional[str] = ProfileOpt,
        data_root: Optional[str] = DataRootOpt,
        set_: Optional[list[str]] = SetOpt,
    ) -> None:
        from emotionclip.core.ids import validate_video_id
        from emotionclip.stages.chain import run_stage_over

        cat = open_catalog(catalog, profile, data_root, set_)
        try:
            validate_video_id(video_id)
        except ValueError as e:
            _fail(e)
        # The very function the stage's Prefect task calls, over this one video.
        with progress_display():
            [outcome] = run_stage_over(cat, name, [video_id], force=force)
        if not outcome.ok:
            _fail(RuntimeError(outcome.reason))
        _emit(outcome.summary)

    return command


@app.command("search", help=STAGES["search"].help)
def search(
    query: Optional[list[str]] = typer.Option(None, "--query", "-q", help="Search query (repeatable); default: the catalog's."),
    max_videos: Optional[int] = typer.Option(None, help="Cap on the number of candidates."),
    catalog: Optional[Path] = CatalogOpt,
    profile: Optional[str] = ProfileOpt,
    data_root: Optional[str] = DataRootOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    from emotionclip.stages.search import run_search

    sets = list(set_ or [])
    if query:
        sets.append("stages.search.queries=" + json.dumps(query))
    if max_videos:
        sets.append(f"stages.search.max_videos={max_videos}")
    cat = open_catalog(catalog, profile, data_root, sets)
    try:
        df = run_search(cat)
    except Exception as e:  # SearchError and friends: message, not traceback
        _fail(e)
    _emit({"candidates": len(df), "path": cat.artifact("candidates")})


@app.command("download", help=STAGES["download"].help)
def download(
    video_id: Optional[str] = typer.Option(None, "--video-id", "-v", help="A YouTube id."),
    url: Optional[str] = typer.Option(None, "--url", help="Any URL yt-dlp supports."),
    folder: Optional[Path] = typer.Option(None, "--folder", help="A local folder of videos with caption files."),
    catalog: Optional[Path] = CatalogOpt,
    profile: Optional[str] = ProfileOpt,
    data_root: Optional[str] = DataRootOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    from emotionclip.stages.download import import_local_folder, run_download
    from emotionclip.core.errors import StageError

    if sum(x is not None for x in (video_id, url, folder)) != 1:
        raise typer.BadParameter("give exactly one of --video-id, --url, --folder")
    cat = open_catalog(catalog, profile, data_root, set_)
    try:
        with progress_display():
            if folder is not None:
                imported = import_local_folder(cat, folder)
                result = {"imported": imported.video_ids, "failures": imported.failures}
            else:
                result = run_download(cat, video_id=video_id, url=url)
    except (StageError, ValueError) as e:
        _fail(e)
    _emit(result)


for _stage in STAGES.values():
    if _stage.per_video:
        app.command(_stage.name, help=_stage.help)(_video_stage(_stage.name))


@app.command("manifests", help=STAGES["manifests"].help)
def manifests(
    force: bool = typer.Option(False, help="Write even if the new set shrinks the current generation by more than "
                                           "stages.manifests.max_shrink_fraction (or to zero)."),
    video_id: Optional[list[str]] = typer.Option(None, "--video-id", "-v", hidden=True),
    catalog: Optional[Path] = CatalogOpt,
    profile: Optional[str] = ProfileOpt,
    data_root: Optional[str] = DataRootOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """Rebuilt from every video whose clips are up to date: a subset would replace the dataset with part of it."""
    from emotionclip.core.manifest_store import ManifestShrinkError
    from emotionclip.stages.manifests import build_manifests
    from emotionclip.stages.registry import done_video_ids

    if video_id:
        typer.echo("error: --video-id is not accepted: the manifests are always rebuilt from every video whose "
                   "clips stage is up to date", err=True)
        raise typer.Exit(2)
    cat = open_catalog(catalog, profile, data_root, set_)
    try:
        _emit(build_manifests(cat, done_video_ids(cat), [], force=force))
    except ManifestShrinkError as e:
        fail_usage(str(e))


@app.command("card", help=STAGES["card"].help)
def card(
    catalog: Optional[Path] = CatalogOpt,
    profile: Optional[str] = ProfileOpt,
    data_root: Optional[str] = DataRootOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    from emotionclip.stages.card import write_card_from_disk

    cat = open_catalog(catalog, profile, data_root, set_)
    _emit({"card": str(write_card_from_disk(cat).path)})
