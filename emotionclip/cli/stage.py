"""`emotionclip stage <stage> ...`: run one stage of build-tv-dataset without a
server, reading and writing the catalog's layout. This is how users debug a
single task; the Prefect tasks call the very same functions. The commands and
their help come from the stage registry (`emotionclip.stages.registry.STAGES`):
one generic command per per-video stage, and the dataset-level stages (search,
download, manifests, card) with their own options."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from emotionclip.cli._common import CatalogOpt, DataRootOpt, ProfileOpt, SetOpt, open_catalog
from emotionclip.stages.registry import STAGES

app = typer.Typer(no_args_is_help=True)


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
        from emotionclip.core.errors import StageError
        from emotionclip.stages.registry import run_stage

        cat = open_catalog(catalog, profile, data_root, set_)
        try:
            _emit(run_stage(cat, name, video_id, force=force))
        except (StageError, ValueError) as e:
            _fail(e)

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
        if folder is not None:
            imported = import_local_folder(cat, folder)
            _emit({"imported": imported.video_ids, "failures": imported.failures})
        else:
            _emit(run_download(cat, video_id=video_id, url=url))
    except (StageError, ValueError) as e:
        _fail(e)


for _stage in STAGES.values():
    if _stage.per_video:
        app.command(_stage.name, help=_stage.help)(_video_stage(_stage.name))


@app.command("manifests", help=STAGES["manifests"].help)
def manifests(
    video_id: Optional[list[str]] = typer.Option(None, "--video-id", "-v", help="Videos to include (default: all with clips)."),
    catalog: Optional[Path] = CatalogOpt,
    profile: Optional[str] = ProfileOpt,
    data_root: Optional[str] = DataRootOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    from emotionclip.stages.manifests import build_manifests
    from emotionclip.stages.registry import is_up_to_date, list_video_ids

    cat = open_catalog(catalog, profile, data_root, set_)
    ids = video_id or [v for v in list_video_ids(cat) if is_up_to_date(cat, "clips", v)]
    _emit(build_manifests(cat, ids, []))


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
