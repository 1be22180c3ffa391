"""pretrain: EmotionCLIP pre-training on the manifests build-tv-dataset wrote.

    validate inputs (config, manifests, frame stores)
      -> train (in this process on one device; torchrun for several GPUs)
      -> artifacts: per-epoch loss/throughput table, the checkpoint

A crash marks the run Failed with the reason; the checkpoints written so far
stay, and a re-run (resume="latest", the default) continues from the newest one.
The logic lives in `emotionclip.training`; this file only orchestrates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from emotionclip.training.config import TrainConfig, make_config


def _config(manifests: Optional[str], out_dir: str, preset: str, overrides: Optional[dict[str, Any]],
            profile: Optional[str], catalog: Optional[str], data_root: Optional[str],
            resume: Optional[str], max_steps: Optional[int], ablation: Optional[str] = None) -> TrainConfig:
    from emotionclip.core.catalog import load_catalog

    if not manifests:  # the catalog's manifests folder
        manifests = load_catalog(catalog, profile=profile, data_root=data_root).artifact("manifests")
    return make_config(preset, ablation=ablation, **{
        "manifests": manifests, "out_dir": out_dir, "profile": profile, "catalog": catalog,
        "data_root": data_root, "resume": resume, "max_steps": max_steps, **(overrides or {}),
    })


@task(name="validate-pretrain-inputs")
def validate_inputs(config: TrainConfig, devices: int, nodes: int = 1) -> dict[str, Any]:
    """Manifests readable and valid, every video's frame store present, at least one
    global batch of clips over all `devices * nodes` ranks (`emotionclip.training.inputs.check_run_inputs`)."""
    from emotionclip.training.inputs import check_run_inputs

    return {**check_run_inputs(config, devices * nodes), "devices": devices, "nodes": nodes}


@task(name="train-emotionclip")
def train_model(config: TrainConfig, devices: int, steps_per_epoch: Optional[int] = None, nodes: int = 1,
                node_rank: int = 0, rdzv_endpoint: Optional[str] = None) -> dict[str, Any]:
    """Train; a crash re-raises with the newest resumable checkpoint in the message.
    Progress: the `pretrain-progress` artifact (step/total, loss, clips/s, ETA)."""
    from emotionclip.training.checkpoint import latest_checkpoint
    from emotionclip.training.launch import Rendezvous, run_training

    # one flow run per node: the same parameters but node_rank (emotionclip.training.launch)
    rendezvous = Rendezvous(nnodes=nodes, node_rank=node_rank, endpoint=rdzv_endpoint)
    try:
        with _progress(config, devices * nodes, steps_per_epoch):
            outcome = run_training(config, nproc=devices, rendezvous=rendezvous)
    except Exception as e:
        raise RuntimeError(f"training crashed: {e!r}; resumable checkpoint: "
                           f"{latest_checkpoint(config.out_dir)}") from e
    if not outcome.ok:
        raise RuntimeError(f"torchrun exited with code {outcome.returncode}; resumable checkpoint: "
                           f"{latest_checkpoint(config.out_dir)}")
    if outcome.result is None:  # under torchrun: what the ranks did is in out_dir
        return {"step": None, "checkpoint": latest_checkpoint(config.out_dir)}
    r = outcome.result
    return {"step": r.step, "epoch": r.epoch, "loss": r.last_loss, "checkpoint": r.checkpoint}


def _progress(config: TrainConfig, devices: int, steps_per_epoch: Optional[int]):
    """The steps into the `pretrain-progress` artifact (at most one update every few
    seconds; a server hiccup is logged, never fatal): reported by the loop itself in
    this process, or under torchrun read from rank 0's metrics.jsonl (a row every
    log_every_steps) while the ranks run."""
    from emotionclip.core.progress import follow_jsonl, track, use
    from emotionclip.training.metrics import METRICS_FILE

    from flows.progress import StepProgress

    hook = StepProgress("pretrain-progress", "pretrain")
    if devices <= 1:
        return use(hook)
    total = config.epochs * steps_per_epoch if steps_per_epoch else None
    if total is not None and config.max_steps is not None:
        total = min(total, config.max_steps)
    return follow_jsonl(Path(config.out_dir) / METRICS_FILE, track("train", total, "steps", hook=hook),
                        info_keys=("epoch", "loss", "clips_per_s"), interval_s=5.0)


def _report(config: TrainConfig, summary: dict[str, Any]) -> None:
    from emotionclip.training.metrics import EPOCHS_FILE, METRICS_FILE, read_jsonl

    out = Path(config.out_dir)
    epochs = read_jsonl(out / EPOCHS_FILE)
    rows = [{"epoch": e["epoch"], "step": e["step"], "loss": round(e["loss"], 5) if e.get("loss") is not None else None,
             "clips_per_s": round(e["clips_per_s"], 2) if e.get("clips_per_s") else None,
             "data_wait_frac": round(e["data_wait_frac"], 3) if e.get("data_wait_frac") is not None else None}
            for e in epochs]
    if not rows:  # stopped inside the first epoch: the last logged step instead
        steps = read_jsonl(out / METRICS_FILE)
        rows = [{"epoch": s["epoch"], "step": s["step"], "loss": s["loss"], "clips_per_s": s.get("clips_per_s"),
                 "data_wait_frac": s.get("data_wait_frac")} for s in steps[-1:]]
    create_table_artifact(table=rows, key="pretrain-epochs", description="Per-epoch loss and throughput")
    ckpt = summary.get("checkpoint")
    link = Path(ckpt).resolve().as_uri() if ckpt and "://" not in ckpt else ckpt
    create_markdown_artifact(
        key="pretrain-checkpoint",
        markdown=(f"## EmotionCLIP checkpoint\n\n[{ckpt}]({link})\n\n"
                  f"- preset: `{config.preset}`\n- ablation: `{config.ablation or 'none'}`\n- step: {summary.get('step')}\n- loss: {summary.get('loss')}\n"
                  f"- metrics: `{out / METRICS_FILE}`, TensorBoard: `{out / 'tensorboard'}`\n\n"
                  f"Load with `emotionclip.models.load_model(path)`; resume with `emotionclip train ... --resume latest`."),
        description="Latest checkpoint")


@flow(name="pretrain", log_prints=True)
def pretrain(
    manifests: Optional[str] = None,
    out_dir: str = "runs/pretrain",
    preset: Literal["paper", "official-code"] = "paper",
    ablation: Optional[str] = None,
    overrides: Optional[dict[str, Any]] = None,
    devices: int = 1,
    profile: Optional[str] = None,
    catalog: Optional[str] = None,
    data_root: Optional[str] = None,
    resume: Optional[str] = "latest",
    max_steps: Optional[int] = None,
    nodes: int = 1,
    node_rank: int = 0,
    rdzv_endpoint: Optional[str] = None,
) -> dict[str, Any]:
    """Pre-train EmotionCLIP on the clips of build-tv-dataset's manifests.

    Args:
        manifests: A manifest Parquet file, a folder of shards or an fsspec URL; default:
            the catalog's manifests folder (what build-tv-dataset wrote).
        out_dir: Local folder for checkpoints, metrics.jsonl, TensorBoard and train_config.json.
        preset: Hyper-parameters: `paper` (appendix B.2) or `official-code` (what the
            authors' public code runs; docs/paper-provenance.md lists the differences).
        ablation: A named row of the paper's Table 1 / Table 3 (vanilla, saam, sap, sap-snce,
            text-random, all-random, text-frozen, text-frame-frozen, temporal-mean), applied
            after the preset; empty: the full model.
        overrides: TrainConfig fields, applied last, e.g. {"batch_size": 64, "epochs": 5}
            (emotionclip/training/config.py lists them).
        devices: Processes on this node: 1 trains in the worker's own process (a GPU if it
            has one, else the CPU); N > 1 launches torchrun with N processes, one per GPU.
            batch_size stays the global batch.
        profile: Model profile of the catalog (paper: ViT-B/32 from OpenCLIP; tiny: random
            weights, offline), which also scales batch and epochs to its data; empty: the
            catalog's default.
        catalog: Catalog file; default data_catalog.yaml (or $EMOTIONCLIP_CATALOG).
        data_root: Data root holding the manifests and frame stores; default: the catalog's.
        resume: `latest` continues from the newest readable checkpoint in out_dir (a fresh
            start when there is none), a checkpoint path resumes from it, empty starts fresh.
        max_steps: Stop after this many optimizer steps (the schedule still spans every
            epoch); empty: train every epoch.
        nodes: Machines training together (torchrun's c10d rendezvous): one flow run per
            machine, each with the same parameters but `node_rank`; `devices` is per machine,
            and `out_dir` must be a folder every machine shares (rank 0 writes the checkpoints).
        node_rank: This flow run's machine, 0 to nodes - 1; node 0 runs on the machine at
            `rdzv_endpoint` and hosts the rendezvous there.
        rdzv_endpoint: HOST:PORT of node 0 that every machine reaches (port default 29400);
            needed when nodes > 1.
    """
    logger = get_run_logger()
    config = _config(manifests, out_dir, preset, overrides, profile, catalog, data_root, resume, max_steps, ablation)
    info = validate_inputs(config, devices, nodes)
    logger.info("training on %d clips from %d videos, %d device(s) x %d node(s)", info["clips"], info["videos"],
                devices, nodes)
    summary = train_model(config, devices, info.get("steps_per_epoch"), nodes, node_rank, rdzv_endpoint)
    _report(config, summary)
    return {**info, **summary}
