"""`emotionclip train`: pre-train EmotionCLIP on clip manifests (paper appendix B.2).

    emotionclip train --manifests data/manifests --out runs/x [--preset paper|official-code]
                      [--ablation NAME] [--profile paper|tiny] [--max-steps N] [--resume latest]
                      [--nproc 8] [--set batch_size=64 --set num_workers=4]
                      [--nnodes 2 --node-rank R --rdzv-endpoint HOST:PORT [--rdzv-id ID] [--local-addr ADDR]]

--ablation applies a named row of the paper's Table 1 or Table 3
(`emotionclip train --list-ablations` prints them with the paper's BoLD numbers).

--profile tiny trains 2 epochs of batch 16 (what the demo's ~80 sample clips
fit) instead of the paper's 25 epochs of 128; DataLoader workers default to the
machine's cores, at most the authors' 8. An explicit --set wins over both
(`emotionclip.training.config._PROFILE_VALUES`).

Bad inputs (missing manifests, too few clips for a batch, missing frame stores,
broken manifest rows, an unreadable checkpoint) are one line on stderr and exit
code 2, checked before the model is built; a full disk, exit code 1.
`emotionclip --debug train ...` shows the traceback instead.

Writes checkpoints under OUT/checkpoints, OUT/metrics.jsonl (one JSON line per
logged step) and TensorBoard files under OUT/tensorboard. Several GPUs on this
node: --nproc N (torchrun). Several nodes: the same command on every node with
--nnodes N --node-rank R --rdzv-endpoint HOST:PORT (node 0's address; torchrun's c10d
rendezvous, hosted by node 0 on that address only) and an OUT that every node shares
(`emotionclip.training.launch` says how the options map onto torchrun's).
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from emotionclip.cli._common import fail_usage, parse_overrides, progress_display

if TYPE_CHECKING:
    from pydantic import ValidationError


# One line per paragraph: the help formatter keeps line breaks.
HELP = (
    "Pre-train EmotionCLIP.\n\n"
    "--profile tiny trains 2 epochs of batch 16 (what the demo's sample manifests fit) instead of the "
    "paper's 25 epochs of 128. DataLoader workers default to min(8, cores) (the authors used 8). "
    "Any --set wins over these defaults.\n\n"
    "Prints the TensorBoard command for the run at start. Bad inputs: one line and exit 2 "
    "(emotionclip --debug train ... for the traceback)."
)


def app(
    manifests: Optional[str] = typer.Option(None, "--manifests", help="Manifests folder, shard file or fsspec URL."),
    out: Optional[str] = typer.Option(None, "--out", help="Output folder: checkpoints, metrics.jsonl, TensorBoard files."),
    preset: str = typer.Option("paper", "--preset", help="Training recipe: paper or official-code."),
    ablation: Optional[str] = typer.Option(
        None, "--ablation", help="A named row of the paper's Table 1 / Table 3 (see --list-ablations)."),
    list_ablations: bool = typer.Option(False, "--list-ablations", help="Print the named ablations and exit."),
    profile: Optional[str] = typer.Option(
        None, "--profile", "-p", help="Catalog model profile (paper or tiny; tiny: 2 epochs of batch 16)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after this many optimizer steps."),
    resume: Optional[str] = typer.Option(None, "--resume", help="'latest' or a checkpoint path."),
    catalog: Optional[Path] = typer.Option(None, "--catalog", "-c", help="Catalog file (frame stores, models)."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="Override the catalog's data_root."),
    nproc: int = typer.Option(1, "--nproc", "--nproc-per-node",
                              help="Processes (GPUs) on this node; >1 launches torchrun."),
    nnodes: int = typer.Option(1, "--nnodes", help="Nodes of the run (torchrun --nnodes); >1 needs --rdzv-endpoint."),
    node_rank: int = typer.Option(0, "--node-rank", help="This node's rank, 0..nnodes-1; node 0 hosts the rendezvous."),
    rdzv_endpoint: Optional[str] = typer.Option(
        None, "--rdzv-endpoint", help="HOST[:PORT] of node 0 (default port 29400), the same on every node."),
    rdzv_id: str = typer.Option("emotionclip", "--rdzv-id", help="Rendezvous id, the same on every node."),
    local_addr: Optional[str] = typer.Option(
        None, "--local-addr", help="This node's address the others reach (default: the one routed to node 0)."),
    sets: Optional[list[str]] = typer.Option(
        None, "--set", help="Override a training config value, e.g. --set batch_size=64 or --set num_workers=4 "
                            "(default: min(8, cores)); repeatable."),
) -> None:
    """Pre-train EmotionCLIP (the command's help is `HELP`)."""
    import json
    import logging

    from pydantic import ValidationError

    from emotionclip.training.ablations import ABLATIONS
    from emotionclip.training.build import load_catalog_for
    from emotionclip.training.config import make_config
    from emotionclip.training.inputs import check_run_inputs
    from emotionclip.training.launch import Rendezvous, run_training
    from emotionclip.training.metrics import TB_DIR

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
    except ValidationError as e:
        fail_usage(_validation_line(e))
    except ValueError as e:
        fail_usage(_one_line(e))
    _check_manifests(manifests)
    load_catalog_for(config)  # a bad catalog file, key or profile: named before the data is read
    # Manifests, a batch's worth of clips, frame stores: in a second, before a model is built
    # or torchrun starts ranks (a TrainingInputError: one line and exit 2, emotionclip.cli).
    try:
        rendezvous = Rendezvous(nnodes=nnodes, node_rank=node_rank, endpoint=rdzv_endpoint, run_id=rdzv_id,
                                local_addr=local_addr)
    except ValueError as e:
        fail_usage(_one_line(e))
    inputs = check_run_inputs(config, world_size=max(1, nproc) * nnodes)
    typer.echo(f"TensorBoard: tensorboard --logdir {Path(config.out_dir) / TB_DIR}", err=True)
    try:
        # world size > 1: under torchrun (several nodes of one process too)
        with progress_display(), _follow_ranks(config, max(1, nproc) * nnodes, inputs["steps_per_epoch"]):
            outcome = run_training(config, nproc=nproc, rendezvous=rendezvous)
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


def _follow_ranks(config, nproc: int, steps_per_epoch: int):
    """Under torchrun the steps happen in the ranks' processes: follow rank 0's
    metrics.jsonl for the bar (a step every log_every_steps); in-process training
    reports each step itself."""
    import contextlib

    from emotionclip.core.progress import follow_jsonl, track
    from emotionclip.training.metrics import METRICS_FILE

    if nproc <= 1:
        return contextlib.nullcontext()
    total = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    return follow_jsonl(Path(config.out_dir) / METRICS_FILE, track("train", total, "steps"),
                        info_keys=("epoch", "loss", "clips_per_s"))


def _one_line(err: BaseException) -> str:
    text = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
    return " ".join(text.split())


def _validation_line(err: ValidationError) -> str:
    """A config validation error as one line, naming the key of each problem."""
    parts = []
    for problem in err.errors():
        key = ".".join(str(x) for x in problem.get("loc", ())) or "config"
        if problem.get("type") == "extra_forbidden":
            parts.append(f"--set {key}: not a training config value (see the fields of "
                         "emotionclip.training.config.TrainConfig)")
        else:
            parts.append(f"{key}={problem.get('input')!r}: {problem.get('msg', 'invalid')}")
    return "; ".join(parts)


def _check_manifests(path: str) -> None:
    """A local --manifests that is missing, or a folder that holds no manifests: say what
    to point it at. (A URL is read as it is; a missing one fails when read.)"""
    if "://" in path:
        return
    from emotionclip.core.manifest_store import MANIFEST_FILE

    p = Path(path)
    build = ("build them with `make demo` (the build-tv-dataset flow on the sample) or "
             "`emotionclip stage manifests`, or point --manifests at <data_root>/manifests")
    if not p.exists():
        fail_usage(f"--manifests {path}: no such file or folder; {build}")
    if p.is_dir() and not (p / MANIFEST_FILE).exists() and not any(p.glob("clips-*.parquet")):
        fail_usage(f"--manifests {path}: not a manifests folder (no {MANIFEST_FILE}, no clips-*.parquet shards); "
                   f"{build}")
