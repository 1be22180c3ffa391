"""`emotionclip dataset status|list|remove`: the video registry of a data root
(`emotionclip.core.video_registry`): what the dataset holds after every run of
build-tv-dataset, what failed and why, and taking a video out of it for good."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from emotionclip.cli._common import CatalogOpt, DataRootOpt, ProfileOpt, SetOpt, fail_usage, open_catalog

if TYPE_CHECKING:
    from emotionclip.core.catalog import Catalog
    from emotionclip.core.video_registry import VideoRegistry

app = typer.Typer(no_args_is_help=True)

STATUSES = ("pending", "done", "failed", "excluded")
JsonOpt = typer.Option(False, "--json", help="Print JSON instead of tables.")


def _console():
    from rich.console import Console

    # Not a terminal (a pipe, a log): wide enough that titles and errors are not cut.
    return Console(width=None if sys.stdout.isatty() else 200)


def _emit(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def _registry(catalog: "Catalog", *, adopt: bool) -> "VideoRegistry":
    """The registry; with `adopt`, a data root built before the registry is
    registered first (the same adoption the flow does on its first run)."""
    from emotionclip.core.schemas import SchemaError
    from emotionclip.core.video_registry import VideoRegistry
    from emotionclip.stages.growth import adopt_data_root

    registry = VideoRegistry(catalog)
    try:
        if adopt:
            adopt_data_root(catalog, registry)
    except OSError as e:  # a read-only data root: show what is there, unregistered
        typer.echo(f"warning: could not register the videos of {catalog.root}: {e}", err=True)
    try:
        registry.read()  # a damaged file: one line naming it, here
    except (SchemaError, OSError) as e:
        fail_usage(str(e))
    return registry


def _per_run(registry: "VideoRegistry") -> list[dict[str, Any]]:
    """Videos (and their kept clips) by the run that first registered them."""
    df = registry.read()
    runs = registry.runs().set_index("run_id")
    out = []
    for run_id, group in df.groupby("added_by_run", sort=False):
        done = group[group["status"] == "done"]
        out.append({
            "run_id": run_id,
            "started": str(runs.loc[run_id, "started"]) if run_id in runs.index else "",
            "videos": int(len(group)), "done": int(len(done)), "clips": int(done["n_clips"].sum()),
        })
    return sorted(out, key=lambda r: (r["started"] or "", r["run_id"]))


@app.command("status")
def status(
    last: int = typer.Option(5, "--runs", min=0, help="How many of the last runs to show."),
    json_: bool = JsonOpt,
    catalog: Optional[Path] = CatalogOpt,
    profile: Optional[str] = ProfileOpt,
    data_root: Optional[str] = DataRootOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """Videos by status (with the reasons of the failed and excluded ones), videos and
    clips per run, and the last runs."""
    from rich.table import Table

    cat = open_catalog(catalog, profile, data_root, set_)
    registry = _registry(cat, adopt=True)
    counts = registry.counts()
    per_run = _per_run(registry)
    runs = registry.runs().tail(last).to_dict("records") if last else []
    if json_:
        _emit({"registry": registry.path, "counts": counts, "per_run": per_run, "runs": runs})
        return
    console = _console()
    t = Table(title=f"Videos ({registry.path})")
    for col in ("status", "videos", "reasons"):
        t.add_column(col)
    reasons = {"failed": counts["failed_reasons"], "excluded": counts["excluded_reasons"]}
    for s in STATUSES:
        t.add_row(s, str(counts[s]), "; ".join(f"{r}: {n}" for r, n in reasons.get(s, {}).items()))
    t.add_row("clips (kept)", str(counts["clips"]), "")
    console.print(t)
    t = Table(title="Videos and clips per run (the run that first registered them)")
    for col in ("run", "started", "videos", "done", "clips"):
        t.add_column(col)
    for r in per_run:
        t.add_row(r["run_id"], r["started"], str(r["videos"]), str(r["done"]), str(r["clips"]))
    console.print(t)
    t = Table(title=f"Last {len(runs)} runs")
    cols = ("run_id", "started", "finished", "source", "videos_added", "videos_done", "videos_failed",
            "videos_excluded", "clips_added", "clips_total")
    for col in cols:
        t.add_column(col)
    for r in runs:
        t.add_row(*(str(r[c]) for c in cols))
    console.print(t)


@app.command("list")
def list_(
    status_: Optional[str] = typer.Option(None, "--status", help="Only videos with this status: "
                                                                  "pending, done, failed or excluded."),
    json_: bool = JsonOpt,
    catalog: Optional[Path] = CatalogOpt,
    profile: Optional[str] = ProfileOpt,
    data_root: Optional[str] = DataRootOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """The videos of the registry (all, or those with one status)."""
    from rich.table import Table

    if status_ is not None and status_ not in STATUSES:
        fail_usage(f"--status {status_!r}: choose one of {', '.join(STATUSES)}")
    cat = open_catalog(catalog, profile, data_root, set_)
    df = _registry(cat, adopt=False).read()
    if status_ is not None:
        df = df[df["status"] == status_]
    if json_:
        _emit(df.to_dict("records"))
        return
    t = Table(title=f"{len(df)} videos" + (f" ({status_})" if status_ else ""))
    cols = ("video_id", "status", "source", "title", "n_clips", "failed_stage", "attempts", "transient", "why")
    for col in cols:
        t.add_column(col)
    for r in df.to_dict("records"):
        why = r["error"] if r["status"] == "failed" else r["excluded_reason"] if r["status"] == "excluded" else ""
        t.add_row(r["video_id"], r["status"], r["source"], r["title"], str(r["n_clips"]), r["failed_stage"],
                  str(r["attempts"]), "yes" if r["transient"] else "", why)
    _console().print(t)


def _remove_path(path: str) -> bool:
    """Delete a file or folder (local or fsspec URL); whether there was one."""
    import fsspec

    fs, p = fsspec.core.url_to_fs(path)
    if not fs.exists(p):
        return False
    fs.rm(p, recursive=fs.isdir(p))
    return True


@app.command("remove")
def remove(
    video_id: str = typer.Argument(..., help="The video to take out of the dataset."),
    purge: bool = typer.Option(False, "--purge", help="Also delete its stored media (raw/ and frames.zip); "
                                                      "the registry row stays."),
    catalog: Optional[Path] = CatalogOpt,
    profile: Optional[str] = ProfileOpt,
    data_root: Optional[str] = DataRootOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """Exclude a video from now on: it leaves the manifests at the next build-tv-dataset
    run and is not fetched or processed again while it is listed in the data root's
    exclusion file (where this adds it)."""
    from emotionclip.core.exclusions import ExclusionsError, add_exclusions
    from emotionclip.core.ids import InvalidVideoId, validate_video_id

    try:
        validate_video_id(video_id)
    except InvalidVideoId as e:
        fail_usage(str(e))
    cat = open_catalog(catalog, profile, data_root, set_, writable=True)
    registry = _registry(cat, adopt=True)
    if video_id not in set(registry.read()["video_id"]):
        fail_usage(f"video {video_id} is not in the registry {registry.path}")
    registry.exclude(video_id, "removed with `emotionclip dataset remove`")
    try:
        added = add_exclusions(cat, ids=[video_id], titles=[], source="dataset remove")
    except ExclusionsError as e:  # the registry row is excluded already; the file needs fixing by hand
        fail_usage(str(e))
    purged = [p for p in (cat.artifact("raw_dir", video_id), cat.artifact("frames", video_id))
              if purge and _remove_path(p)]
    _emit({"video_id": video_id, "status": "excluded", "exclusions": added["path"], "purged": purged})
