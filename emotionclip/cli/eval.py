"""`emotionclip eval ...`: linear-probe evaluation on the downstream benchmarks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(no_args_is_help=True)


@app.command("inspect")
def inspect_cmd(
    dataset: str = typer.Argument(..., help="bold, meld, emotic, moviegraphs or liris"),
    root: Path = typer.Option(..., "--root", help="The dataset folder (published layout)."),
) -> None:
    """Check a dataset folder before a long run; print JSON: per-split sample and
    per-class counts, missing or unreadable files. Exit 1 when files are missing."""
    from emotionclip.evaluation.datasets import get_module

    try:
        mod = get_module(dataset)
    except KeyError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2)
    report = mod.inspect(root)
    typer.echo(json.dumps(report, indent=2, default=str))
    if not report["ok"]:
        raise typer.Exit(1)


@app.command("run")
def run_cmd(
    dataset: str = typer.Argument(..., help="bold, meld, emotic, moviegraphs or liris"),
    root: Path = typer.Option(..., "--root", help="The dataset folder (published layout)."),
    out: Path = typer.Option(..., "--out", help="Where the results table (Parquet + Markdown) goes."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="One of our EmotionCLIP checkpoints."),
    official_checkpoint: Optional[Path] = typer.Option(None, "--official-checkpoint", help="The authors' released checkpoint."),
    profile: Optional[str] = typer.Option(None, "--profile", help="Build the catalog profile's model (tiny: random weights)."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Let an official checkpoint that needs full unpickling load (trusted files only)."),
    c_mode: str = typer.Option("preset", "--c-mode", help="preset (authors' fixed C) or search (on the validation split)."),
    c: Optional[float] = typer.Option(None, "--c", help="Use this C."),
    smoothing: str = typer.Option("sequence", "--smoothing", help="LIRIS: sequence (authors), per_movie or none."),
    savgol_window: int = typer.Option(100, help="LIRIS Savitzky-Golay window (authors: 100)."),
    savgol_order: int = typer.Option(3, help="LIRIS Savitzky-Golay order (authors: 3)."),
    seed: int = typer.Option(2022, help="Probe seed (authors: 2022)."),
    detect: bool = typer.Option(True, "--detect/--no-detect", help="Detect humans where the dataset gives no box."),
    det_imgsz: int = typer.Option(640, help="Detector input size (paper: 640)."),
    catalog: Optional[Path] = typer.Option(None, help="Catalog file (detector of the profile)."),
    cache_dir: Optional[Path] = typer.Option(None, help="Feature cache (default: OUT/cache)."),
    batch_size: int = typer.Option(16),
    device: str = typer.Option("cpu"),
    limit: Optional[int] = typer.Option(None, help="Use the first N samples of each split (smoke runs)."),
) -> None:
    """Features (cached) -> the paper's probe -> results table in OUT; prints a JSON summary."""
    if sum(x is not None for x in (checkpoint, official_checkpoint, profile)) != 1:
        typer.echo("give exactly one of --checkpoint, --official-checkpoint, --profile", err=True)
        raise typer.Exit(2)
    if c_mode not in ("preset", "search") or smoothing not in ("sequence", "per_movie", "none"):
        typer.echo("--c-mode must be preset|search and --smoothing sequence|per_movie|none", err=True)
        raise typer.Exit(2)
    import contextlib
    import sys

    # Library chatter (Ultralytics' first-run settings notice) goes to stderr: stdout is the JSON summary.
    with contextlib.redirect_stdout(sys.stderr):
        summary = _run(dataset, root, out, checkpoint, official_checkpoint, profile, allow_pickle, c_mode, c,
                       smoothing, savgol_window, savgol_order, seed, detect, det_imgsz, catalog, cache_dir,
                       batch_size, device, limit)
    typer.echo(json.dumps(summary, indent=2, default=str))


def _run(dataset, root, out, checkpoint, official_checkpoint, profile, allow_pickle, c_mode, c, smoothing,
         savgol_window, savgol_order, seed, detect, det_imgsz, catalog, cache_dir, batch_size, device, limit) -> dict:
    from emotionclip.evaluation.features import FeatureConfig
    from emotionclip.evaluation.probes import ProbeConfig
    from emotionclip.evaluation.run import detector_for, load_model, run_linear_probe

    handle = load_model(str(checkpoint) if checkpoint else None,
                        str(official_checkpoint) if official_checkpoint else None,
                        profile, device, allow_pickle, str(catalog) if catalog else None)
    det = detector_for(profile, str(catalog) if catalog else None) if detect else None
    summary = run_linear_probe(
        dataset, root, handle, out,
        probe_config=ProbeConfig(c_mode=c_mode, c=c, seed=seed, smoothing=smoothing,  # type: ignore[arg-type]
                                 savgol_window=savgol_window, savgol_order=savgol_order),
        feature_config=FeatureConfig(detector=det, det_imgsz=det_imgsz), cache_dir=cache_dir, batch_size=batch_size,
        device=device, limit=limit)
    summary.pop("rows")
    return summary
