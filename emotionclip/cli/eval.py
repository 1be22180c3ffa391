"""`emotionclip eval ...`: linear-probe evaluation on the downstream benchmarks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NoReturn, Optional

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
    for note in report.get("notes", ()):  # stdout stays JSON
        typer.echo(f"note: {note}", err=True)
    if not report["ok"]:
        raise typer.Exit(1)


@app.command("run")
def run_cmd(
    dataset: str = typer.Argument(..., help="bold, meld, emotic, moviegraphs or liris"),
    root: Path = typer.Option(..., "--root", help="The dataset folder (published layout)."),
    out: Path = typer.Option(..., "--out", help="Where the results table (Parquet + Markdown) goes."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="One of our EmotionCLIP checkpoints."),
    official_checkpoint: Optional[Path] = typer.Option(None, "--official-checkpoint", help="The authors' released checkpoint."),
    profile: Optional[str] = typer.Option(
        None, "--profile",
        help="Alone: build the catalog profile's model (tiny: random weights). With a checkpoint: take only the "
             "auxiliary models (detector) from it."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Let an official checkpoint that needs full unpickling load (trusted files only)."),
    c_mode: str = typer.Option(
        "paper", "--c-mode",
        help="How C is chosen: paper (seeded log-uniform random search, appendix B.3), grid (a fixed grid) or "
             "preset (the authors' fixed C). Both searches score on the validation split, or on a hold-out of "
             "train where the benchmark has none or no public test labels (BoLD)."),
    c_trials: int = typer.Option(32, "--c-trials", min=1, help="Random-search trials of --c-mode paper (ours: 32)."),
    c: Optional[float] = typer.Option(None, "--c", help="Use this C (overrides --c-mode)."),
    smoothing: str = typer.Option("sequence", "--smoothing", help="LIRIS: sequence (authors), per_movie or none."),
    savgol_window: int = typer.Option(100, help="LIRIS Savitzky-Golay window (authors: 100)."),
    savgol_order: int = typer.Option(3, help="LIRIS Savitzky-Golay order (authors: 3)."),
    seed: int = typer.Option(2022, "--seed", help="Probe seed: the search's trials and hold-out, the classifiers "
                                                    "(authors: 2022)."),
    detect: bool = typer.Option(True, "--detect/--no-detect", help="Detect humans where the dataset gives no box."),
    det_imgsz: int = typer.Option(640, help="Detector input size (paper: 640)."),
    catalog: Optional[Path] = typer.Option(None, help="Catalog file (detector of the profile)."),
    cache_dir: Optional[Path] = typer.Option(None, help="Feature cache (default: OUT/cache)."),
    batch_size: int = typer.Option(16),
    device: str = typer.Option("cpu"),
    limit: Optional[int] = typer.Option(None, help="Use the first N samples of each split (smoke runs)."),
) -> None:
    """Features (cached) -> the paper's probe -> results table in OUT; prints a JSON summary.
    The model: --checkpoint or --official-checkpoint (with --profile for the detector), or --profile alone."""
    if checkpoint is not None and official_checkpoint is not None:
        _fail("give one of --checkpoint and --official-checkpoint, not both")
    if checkpoint is None and official_checkpoint is None and profile is None:
        _fail("give --checkpoint, --official-checkpoint or --profile")
    if c_mode not in ("paper", "grid", "preset") or smoothing not in ("sequence", "per_movie", "none"):
        _fail("--c-mode must be paper|grid|preset and --smoothing sequence|per_movie|none")
    for flag, path in (("--checkpoint", checkpoint), ("--official-checkpoint", official_checkpoint)):
        if path is not None and not path.is_file():
            _fail(f"{flag} {path}: no such file")
    import contextlib
    import sys

    from emotionclip.evaluation.datasets import get_spec

    try:
        name = get_spec(dataset).name
    except KeyError as e:
        _fail(str(e.args[0]))
    if not root.is_dir():
        _fail(f"--root {root}: no such folder")
    from emotionclip.cli._common import progress_display

    # Library chatter (Ultralytics' first-run settings notice) goes to stderr: stdout is the JSON summary.
    # Progress bars (features per split) go to stderr too, on a terminal or with EMOTIONCLIP_PROGRESS=1.
    with contextlib.redirect_stdout(sys.stderr), progress_display():
        summary = _run(name, root, out, checkpoint, official_checkpoint, profile, allow_pickle, c_mode, c,
                       smoothing, savgol_window, savgol_order, seed, detect, det_imgsz, catalog, cache_dir,
                       batch_size, device, limit, c_trials)
    typer.echo(json.dumps(summary, indent=2, default=str))


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _run(dataset, root, out, checkpoint, official_checkpoint, profile, allow_pickle, c_mode, c, smoothing,
         savgol_window, savgol_order, seed, detect, det_imgsz, catalog, cache_dir, batch_size, device, limit,
         c_trials=32) -> dict:
    from emotionclip.core.catalog import CatalogError
    from emotionclip.core.errors import ModelNotAvailable
    from emotionclip.evaluation.datasets import DatasetLayoutError
    from emotionclip.evaluation.features import FeatureConfig
    from emotionclip.evaluation.probes import ProbeConfig
    from emotionclip.evaluation.run import NoUsableSamples, check_layout, detector_for, load_model, run_linear_probe

    try:
        check_layout(dataset, root)  # a wrong folder fails before a model is loaded
    except DatasetLayoutError as e:
        _fail(f"{root} does not have the {dataset} layout: {e}")
    try:
        handle = load_model(str(checkpoint) if checkpoint else None,
                            str(official_checkpoint) if official_checkpoint else None,
                            profile, device, allow_pickle, str(catalog) if catalog else None)
        det = detector_for(profile, str(catalog) if catalog else None) if detect else None
    except (CatalogError, ModelNotAvailable, OSError, ValueError) as e:
        _fail(f"could not load the model: {e}")
    try:
        summary = run_linear_probe(
            dataset, root, handle, out,
            probe_config=ProbeConfig(c_mode=c_mode, c=c, c_trials=c_trials, seed=seed,  # type: ignore[arg-type]
                                     smoothing=smoothing, savgol_window=savgol_window, savgol_order=savgol_order),
            feature_config=FeatureConfig(detector=det, det_imgsz=det_imgsz), cache_dir=cache_dir,
            batch_size=batch_size, device=device, limit=limit)
    except NoUsableSamples as e:
        _fail(str(e))
    except DatasetLayoutError as e:
        _fail(f"{root} does not have the {dataset} layout: {e}")
    summary.pop("rows")
    return summary


@app.command("paper")
def paper_cmd(
    table: Optional[str] = typer.Option(
        None, "--table", help="4 (Table 4 a-e), 4a..4e, 1, 3, A3 (appendix Table 3), 5 or A5 (appendix Table 5); "
                              "default: all."),
    as_json: bool = typer.Option(False, "--json", help="One JSON record per number, with its source."),
) -> None:
    """Print the paper's linear-probe numbers (paper Tables 1, 3, 4 and appendix Tables 3, 5)."""
    from emotionclip.evaluation import paper

    names = [table] if table else ["4", "1", "3", "A3", "A5"]
    try:
        keys = [k for n in names for k in paper.table_keys(n)]
    except KeyError as e:
        typer.echo(str(e.args[0]), err=True)
        raise typer.Exit(2)
    if as_json:
        typer.echo(json.dumps([r for k in keys for r in paper.records(k)], indent=2, ensure_ascii=False))
    else:
        typer.echo("\n".join(paper.table_markdown(k) for k in keys))


@app.command("make-sample")
def make_sample_cmd(
    dataset: str = typer.Argument(..., help="bold, moviegraphs, meld, emotic or liris"),
    out: Path = typer.Option(..., "--out", help="Folder to write (must not exist, or be empty); then give it to "
                                                "`eval run --root`."),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic labels and media."),
    size: str = typer.Option("small", "--size", help="small (14 samples per split) or medium (56)."),
    n_per_split: Optional[int] = typer.Option(None, "--n-per-split", help="Samples per split (at least 4); "
                                                                          "overrides --size."),
) -> None:
    """Write a miniature copy of a benchmark in its published layout (synthetic test-pattern
    videos or images, real files) to try `eval inspect` and `eval run` on without the real
    data; prints JSON: the root, the samples per split and the command to run next."""
    from emotionclip.evaluation.sample import MARKER, SIZES, make_sample

    if size not in SIZES:
        _fail(f"--size must be one of {', '.join(SIZES)}")
    try:
        root = make_sample(dataset, out, seed=seed, n_per_split=n_per_split or SIZES[size])
    except KeyError as e:
        _fail(str(e.args[0]))
    except (FileExistsError, ValueError) as e:
        _fail(str(e))
    info = json.loads((root / MARKER).read_text())
    typer.echo(json.dumps({"dataset": info["dataset"], "root": str(root), "splits": info["splits"],
                           "next": f"emotionclip eval run {info['dataset']} --root {root} --profile tiny "
                                   f"--out {root}-results"}, indent=2))


@app.command("exclusions")
def exclusions_cmd(
    dataset: str = typer.Argument(..., help="bold, meld, emotic, moviegraphs or liris"),
    root: Path = typer.Option(..., "--root", help="The dataset folder (published layout)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would be added; write nothing."),
    catalog: Optional[Path] = typer.Option(None, "--catalog", "-c", help="Catalog file (default: data_catalog.yaml or $EMOTIONCLIP_CATALOG)."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="Override the catalog's data_root."),
    sets: Optional[list[str]] = typer.Option(None, "--set", help="Override a catalog value (repeatable)."),
) -> None:
    """Add the YouTube ids and titles in a downstream dataset's files to the data root's
    exclusion list (dataset/exclusions.yaml), so the TV dataset search leaves those videos
    out (paper appendix A.1). Prints JSON: counts found, added and already excluded, notes."""
    from emotionclip.cli._common import open_catalog
    from emotionclip.core.exclusions import ExclusionsError, add_exclusions
    from emotionclip.evaluation.datasets import DatasetLayoutError
    from emotionclip.evaluation.exclusions import dataset_exclusions

    try:
        found = dataset_exclusions(dataset, root)
    except KeyError as e:
        _fail(str(e.args[0]))
    except DatasetLayoutError as e:
        _fail(f"{root} does not have the {dataset} layout: {e}")
    cat = open_catalog(catalog, None, data_root, sets, writable=not dry_run)
    try:
        summary = add_exclusions(cat, found.ids, found.titles, found.dataset, root=str(root.resolve()),
                                 dry_run=dry_run)
    except (ExclusionsError, OSError) as e:
        _fail(str(e))
    summary["notes"] = found.notes
    typer.echo(json.dumps(summary, indent=2))
    for note in found.notes:
        typer.echo(f"note: {note}", err=True)
