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
from typing import Any, Optional

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
def validate_inputs(config: TrainConfig, devices: int) -> dict[str, Any]:
    """Manifests readable and valid, every video's frame store present, at least one
    global batch of clips (`emotionclip.training.inputs.check_run_inputs`)."""
    from emotionclip.training.inputs import check_run_inputs

    return {**check_run_inputs(config, devices), "devices": devices}


@task(name="train-emotionclip")
def train_model(config: TrainConfig, devices: int) -> dict[str, Any]:
    """Train; a crash re-raises with the newest resumable checkpoint in the message."""
    from emotionclip.training.checkpoint import latest_checkpoint
    from emotionclip.training.launch import run_training

    try:
        outcome = run_training(config, nproc=devices)
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
    preset: str = "paper",
    ablation: Optional[str] = None,
    overrides: Optional[dict[str, Any]] = None,
    devices: int = 1,
    profile: Optional[str] = None,
    catalog: Optional[str] = None,
    data_root: Optional[str] = None,
    resume: Optional[str] = "latest",
    max_steps: Optional[int] = None,
) -> dict[str, Any]:
    """Pre-train EmotionCLIP. `manifests` defaults to the catalog's manifests folder;
    `ablation` is a named row of the paper's Table 1 / Table 3 (emotionclip.training.ABLATIONS);
    `overrides` are TrainConfig fields (e.g. {"batch_size": 64}), applied after it; `devices` > 1
    runs torchrun with one process per GPU on this machine."""
    logger = get_run_logger()
    config = _config(manifests, out_dir, preset, overrides, profile, catalog, data_root, resume, max_steps, ablation)
    info = validate_inputs(config, devices)
    logger.info("training on %d clips from %d videos, %d device(s)", info["clips"], info["videos"], devices)
    summary = train_model(config, devices)
    _report(config, summary)
    return {**info, **summary}
