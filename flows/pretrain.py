"""pretrain: EmotionCLIP pre-training on the manifests build-tv-dataset wrote.

    validate inputs (config, manifests, frame stores)
      -> train (in this process on one device; torchrun for several GPUs), showing
         its config, progress, loss curve and probe results as artifacts while it runs
      -> report: per-epoch loss/throughput table, the checkpoint

A crash marks the run Failed with the reason; the checkpoints written so far
stay, and a re-run (resume="latest", the default) continues from the newest one.
The logic lives in `emotionclip.training`, the tasks in `tasks/training.py`; this
file only composes them.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from prefect import flow

from emotionclip.training.config import run_config
from tasks.training import report_training, train_model, validate_inputs


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
    config = run_config(preset, ablation, manifests=manifests, out_dir=out_dir, profile=profile, catalog=catalog,
                        data_root=data_root, resume=resume, max_steps=max_steps, overrides=overrides)
    info = validate_inputs(config, devices, nodes)
    summary = train_model(config, devices, info.get("steps_per_epoch"), nodes, node_rank, rdzv_endpoint)
    report_training(config, summary)
    return {**info, **summary}
