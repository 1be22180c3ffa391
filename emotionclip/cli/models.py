"""`emotionclip models ...`: build the tiny models; pre-fetch the paper's weights
on a machine with internet, for machines without it (docs/design.md section 6)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from emotionclip.cli._common import CatalogOpt, SetOpt, fail_usage, open_catalog

app = typer.Typer(no_args_is_help=True)


@app.command("build-tiny")
def build_tiny(
    models_dir: Optional[Path] = typer.Option(None, help="Where to build (default: the catalog's models_dir)."),
    force: bool = typer.Option(False, help="Rebuild parts that already exist."),
    only: Optional[list[str]] = typer.Option(None, help="Build only these parts: punctuation, emotion, detector."),
    catalog: Optional[Path] = CatalogOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """Build the tiny random-weight models (offline) under MODELS_DIR/tiny/."""
    from emotionclip.zoo.tiny import build_tiny_models

    target = models_dir if models_dir is not None else open_catalog(catalog, None, None, set_).models_path
    try:
        paths = build_tiny_models(target, only=only or None, force=force)
    except ValueError as e:
        fail_usage(str(e))
    typer.echo(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))


def _fetch_hf(repo_id: str, out: Path) -> Path:
    from huggingface_hub import snapshot_download

    dest = out / repo_id  # out/<org>/<name>: with models_dir=out the hub id resolves here unchanged
    snapshot_download(repo_id, local_dir=str(dest))
    return dest


def _fetch_ultralytics(name: str, out: Path) -> Path:
    from emotionclip.core.env import configure_environment

    configure_environment()
    from ultralytics.utils.downloads import attempt_download_asset

    dest = out / Path(name).name
    return Path(attempt_download_asset(dest))


def _fetch_open_clip(model: str, tag: str, out: Path) -> Path:
    import open_clip
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg

    cfg = get_pretrained_cfg(model, tag)
    if not cfg:
        raise ValueError(f"OpenCLIP has no pretrained tag {tag!r} for {model!r}: {open_clip.list_pretrained_tags_by_model(model)}")
    # A plain file (not the HF cache layout), so the catalog can name it directly.
    return Path(download_pretrained(cfg, prefer_hf_hub=False, cache_dir=str(out / "open_clip")))


@app.command("fetch")
def fetch(
    profile: str = typer.Option("paper", "--profile", "-p", help="Profile whose weights to download."),
    out: Optional[Path] = typer.Option(None, "--out", help="Destination folder (default: the catalog's models_dir)."),
    catalog: Optional[Path] = CatalogOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """Download a profile's weights (punctuation, emotion, detector, OpenCLIP) into one folder.

    Run it on a machine with internet, copy the folder to the offline machine and
    point the catalog at it (the lines to use are printed at the end)."""
    cat = open_catalog(catalog, profile, None, set_)
    dest = (out if out is not None else cat.models_path).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    m = cat.models
    jobs = [
        ("punctuation", m.punctuation, lambda: _fetch_hf(m.punctuation, dest)),
        ("emotion", m.emotion, lambda: _fetch_hf(m.emotion, dest)),
        ("detector", m.detector, lambda: _fetch_ultralytics(m.detector, dest)),
    ]
    if m.clip_pretrained:
        jobs.append(("clip_pretrained", m.clip_pretrained, lambda: _fetch_open_clip(m.clip_model, m.clip_pretrained, dest)))
    got: dict[str, Path] = {}
    failed = []
    for field, ref, job in jobs:
        if ref.startswith(("tiny/", "./", "/")):
            typer.echo(f"skip {field}: {ref} is a local model, nothing to download")
            continue
        typer.echo(f"fetching {field}: {ref} ...")
        try:
            got[field] = job()
        except Exception as e:  # network, offline mode, unknown id: report each, go on
            failed.append(field)
            typer.echo(f"error: could not download the {field} weights {ref!r}: {type(e).__name__}: {e}", err=True)
    if got:
        typer.echo(f"\nWeights are under {dest}. Copy that folder to the offline machine, then either set\n"
                   f"  models_dir: {dest}\n"
                   f"in the catalog (hub ids and file names resolve to folders there), or name the files:\n"
                   f"profiles:\n  {profile}:")
        for field in ("punctuation", "emotion", "detector"):
            typer.echo(f"    {field}: {got.get(field, getattr(m, field))}")
        typer.echo(f"    clip_model: {m.clip_model}")
        if m.clip_pretrained:
            typer.echo(f"    clip_pretrained: {got.get('clip_pretrained', m.clip_pretrained)}")
    if failed:
        typer.echo(f"\n{len(failed)} download(s) failed ({', '.join(failed)}). This command needs internet "
                   f"(unset HF_HUB_OFFLINE / YOLO_OFFLINE); run it on a machine that has it.", err=True)
        raise typer.Exit(1)
