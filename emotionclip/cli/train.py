"""`emotionclip train`: pre-train EmotionCLIP on clip manifests (paper appendix B.2).

    emotionclip train --manifests data/manifests --out runs/x [--preset paper|official-code]
                      [--ablation NAME] [--profile paper|tiny] [--max-steps N] [--resume latest]
                      [--nproc 8] [--set batch_size=64 --set num_workers=4]

--ablation applies a named row of the paper's Table 1 or Table 3
(`emotionclip train --list-ablations` prints them with the paper's BoLD numbers).

Bad inputs (missing frame stores, broken manifest rows, an unreadable
checkpoint) are one line on stderr and exit code 2; a full disk, exit code 1.

Writes checkpoints under OUT/checkpoints, OUT/metrics.jsonl (one JSON line per
logged step) and TensorBoard files under OUT/tensorboard. Several GPUs on this
node: --nproc N (torchrun); several nodes: run
`torchrun ... -m emotionclip.training.launch --config OUT/train_config.json`.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Optional

import typer

from emotionclip.cli._common import fail_usage, parse_overrides


def app(
    manifests: Optional[str] = typer.Option(None, "--manifests", help="Manifests folder, shard file or fsspec URL."),
    out: Optional[str] = typer.Option(None, "--out", help="Output folder: checkpoints, metrics.jsonl, TensorBoard files."),
    preset: str = typer.Option("paper", "--preset", help="Training recipe: paper or official-code."),
    ablation: Optional[str] = typer.Option(
        None, "--ablation", help="A named row of the paper's Table 1 / Table 3 (see --list-ablations)."),
    list_ablations: bool = typer.Option(False, "--list-ablations", help="Print the named ablations and exit."),
    profile: Optional[str] = typer.Option(None, "--profile", "-p", help="Catalog model profile (paper or tiny)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after this many optimizer steps."),
    resume: Optional[str] = typer.Option(None, "--resume", help="'latest' or a checkpoint path."),
    catalog: Optional[Path] = typer.Option(None, "--catalog", "-c", help="Catalog file (frame stores, models)."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="Override the catalog's data_root."),
    nproc: int = typer.Option(1, "--nproc", help="Processes (GPUs) on this node; >1 launches torchrun."),
    sets: Optional[list[str]] = typer.Option(None, "--set", help="Override a training config value, e.g. --set batch_size=64 (repeatable)."),
) -> None:
    """Pre-train EmotionCLIP."""
    import json
    import logging

    from pydantic import ValidationError

    from emotionclip.training.ablations import ABLATIONS
    from emotionclip.training.config import make_config
    from emotionclip.training.errors import TrainingInputError
    from emotionclip.training.launch import run_training

    if list_ablations:
        for a in ABLATIONS.values():
            typer.echo(json.dumps({"name": a.name, "rows": list(a.rows), "overrides": a.overrides,
                                   "paper_bold": a.bold}, ensure_ascii=False))
        raise typer.Exit(0)
    if not manifests or not out:
        typer.echo("error: --manifests and --out are required", err=True)
        raise typer.Exit(2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    values = dict(manifests=manifests, out_dir=out, profile=profile, max_steps=max_steps, resume=resume,
                  catalog=str(catalog) if catalog else None, data_root=data_root)
    values.update(parse_overrides(sets))
    try:
        config = make_config(preset, ablation=ablation, **values)
    except (ValueError, ValidationError) as e:
        fail_usage(str(e))
    try:
        outcome = run_training(config, nproc=nproc)
    except TrainingInputError as e:  # the user's to fix (the message says how): no traceback
        typer.echo(f"error: {_one_line(e)}", err=True)
        raise typer.Exit(2)
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        typer.echo(f"error: {_one_line(e)}; checkpoints in {out} can be resumed with --resume latest", err=True)
        raise typer.Exit(1)
    if not outcome.ok:
        typer.echo(f"error: torchrun exited with {outcome.returncode}; checkpoints in {out} can be resumed with "
                   "--resume latest", err=True)
        raise typer.Exit(outcome.returncode)
    if outcome.result is None:  # under torchrun: the ranks reported in their own logs
        raise typer.Exit(0)
    result = outcome.result
    typer.echo(json.dumps({"step": result.step, "epoch": result.epoch, "loss": result.last_loss,
                           "checkpoint": result.checkpoint}))


def _one_line(err: BaseException) -> str:
    text = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
    return " ".join(text.split())
