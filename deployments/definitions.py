"""The deployments of this project, on one process work pool.

    build-tv-dataset/youtube-paper   YouTube search, paper models, weekly schedule
    build-tv-dataset/sample-tiny     bundled sample corpus, tiny models, offline
    pretrain/tiny                    pre-training on the sample manifests (tiny model)
    ablation/tiny                    two variants (base, beta 1) pre-trained and probed, tiny, offline
    linear-probe/paper               the five benchmarks (folders filled in per run), a checkpoint
    linear-probe/sample              miniature synthetic benchmarks (generated if missing), tiny
                                     profile, pretrain/tiny's newest checkpoint if any, offline

`register_deployments()` creates the work pool, the global YouTube rate limit and
the GPU concurrency limit if missing, installs the automation that marks
unresponsive runs Crashed, then registers the deployments. Users pause/resume the
schedule and start runs with other parameters from the UI.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from typing import Any

from emotionclip.core.catalog import REPO_ROOT

WORK_POOL = "emotionclip"
GPU_TAG_LIMIT = 1  # one model stage at a time per GPU by default
WEEKLY = "0 3 * * 1"  # Mondays 03:00
# A flow run's process sends a heartbeat event this often (Prefect's minimum: 30 s) ...
HEARTBEAT_S = 60
# ... and one silent for this many heartbeats is marked Crashed (a SIGKILLed worker,
# a lost machine: without it the run would show Running forever).
UNRESPONSIVE_AFTER_HEARTBEATS = 3
CRASH_AUTOMATION = "emotionclip: crash unresponsive flow runs"
# Offline environment for the tiny profile (docs/design.md section 7).
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "YOLO_OFFLINE": "1"}


@dataclass
class DeploymentSpec:
    flow_entrypoint: str
    name: str
    description: str
    parameters: dict[str, Any] = field(default_factory=dict)
    cron: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    # None: concurrent runs are safe through per-(video, stage) file locks, and a
    # killed run holds no deployment slot that would block the re-run.
    concurrency_limit: int | None = None
    tags: list[str] = field(default_factory=list)


BUILD = "flows/build_tv_dataset.py:build_tv_dataset"
PAPER_VIDEOS = 3613  # the paper's dataset: 3,613 TV series videos (section 3.1)
# The sample corpus with random tiny models: see the sample-tiny description.
SAMPLE_OVERRIDES = {"stages.filter.max_neutral": 0.5, "stages.humans.imgsz": 320}

PROBE = "flows/linear_probe.py:linear_probe"
# Placeholders in each benchmark's published folder name, for the user to replace.
PAPER_BENCHMARK_ROOTS = {"bold": "/data/BOLD_public", "moviegraphs": "/data/MovieGraphs", "meld": "/data/MELD.Raw",
                         "emotic": "/data/emotic", "liris": "/data/LIRIS-ACCEDE"}

DEPLOYMENTS: list[DeploymentSpec] = [
    DeploymentSpec(
        BUILD, "youtube-paper",
        "Search YouTube for TV series, download and annotate them with the paper's models "
        "(weights fetched on first use, or pre-fetched with `emotionclip models fetch`).",
        # Each weekly run adds what the search finds beyond the videos already done, excluded
        # or given up on (the video registry), until the paper's scale (docs/paper-provenance.md).
        parameters={"source": "youtube", "profile": "paper", "target_videos": PAPER_VIDEOS},
        cron=WEEKLY,
        tags=["paper"],
    ),
    DeploymentSpec(
        BUILD, "sample-tiny",
        "The bundled sample corpus with the tiny random-weight models, offline. Random tiny "
        "models score every emotion about 1/7, so this deployment relaxes the neutral "
        "threshold from the paper's 0.05 to 0.5; otherwise no clip would pass. The sample "
        "videos are 320x240, so detection runs at imgsz 320 (640 would only upsample them).",
        parameters={"source": "sample", "profile": "tiny", "overrides": SAMPLE_OVERRIDES},
        env=OFFLINE_ENV,
        tags=["sample"],
    ),
    DeploymentSpec(
        PROBE, "paper",
        "Linear-probe evaluation with the paper's protocol (appendix B.3) on the real benchmarks. "
        "Fill in `datasets` (benchmark -> its folder in the published layout; drop the ones you "
        "do not have; `emotionclip eval inspect` checks a folder) and `checkpoint` (ours) or "
        "`official_checkpoint` (the authors'); with neither, the paper profile's untrained model "
        "(OpenCLIP initialisation) is evaluated. Paper models, fetched on first use; set `device` "
        "to cuda on a GPU machine.",
        parameters={"datasets": PAPER_BENCHMARK_ROOTS, "profile": "paper", "checkpoint": None,
                    "out_dir": str(REPO_ROOT / "runs" / "linear-probe-paper")},
        tags=["paper"],
    ),
    DeploymentSpec(
        PROBE, "sample",
        "Linear probe end to end without any download: writes miniature synthetic copies of BoLD, "
        "MovieGraphs, MELD, EMOTIC and LIRIS-ACCEDE in their published layouts under "
        "<data_root>/eval-samples/ when missing (`emotionclip eval make-sample`), then probes them "
        "with the tiny profile: pretrain/tiny's newest checkpoint if it has written one, else the "
        "tiny random-weight model. The media are test patterns, not people, so the numbers only "
        "show that the path works. The sample videos are 64x48, so detection runs at imgsz 64.",
        parameters={"datasets": {}, "samples": ["bold", "moviegraphs", "meld", "emotic", "liris"],
                    "sample_size": "small", "profile": "tiny", "det_imgsz": 64,
                    # pretrain/tiny's out_dir (tests check the two agree)
                    "checkpoint_from_run": str(REPO_ROOT / "runs" / "pretrain-tiny"),
                    "out_dir": str(REPO_ROOT / "runs" / "linear-probe-sample")},
        env=OFFLINE_ENV,
        tags=["sample"],
    ),
    DeploymentSpec(
        "flows/pretrain.py:pretrain", "tiny",
        "Pre-train the tiny model on the sample manifests (smoke test of the training path): "
        "run build-tv-dataset/sample-tiny first.",
        parameters={"profile": "tiny", "out_dir": str(REPO_ROOT / "runs" / "pretrain-tiny"),
                    "overrides": {"batch_size": 4, "num_workers": 0, "epochs": 1}},
        env=OFFLINE_ENV, tags=["sample"]),
    DeploymentSpec(
        "flows/ablation.py:ablation", "tiny",
        "Ablation smoke test on the sample manifests (run build-tv-dataset/sample-tiny first): the base "
        "config and beta = 1 (paper Fig. 6), a few steps each with the tiny model, then the linear probe "
        "on a miniature BoLD written under <data_root>/eval-samples/ when missing; comparison table and "
        "plots in runs/ablation-tiny/. A finished variant is not trained again. Add variants in a custom "
        "run, e.g. {\"ablation\": \"saam\"} or {\"max_neutral\": 0.3} (re-filters the sample's clips; "
        "catalog_overrides must stay those of sample-tiny).",
        parameters={"variants": [{}, {"beta": 1.0}], "profile": "tiny", "max_steps": 3,
                    "overrides": {"batch_size": 4, "num_workers": 0, "epochs": 1},
                    # the sample-tiny build's catalog overrides: the re-filter of a max_neutral
                    # variant finds the clips up to date only under them
                    "catalog_overrides": SAMPLE_OVERRIDES,
                    "probe": {"det_imgsz": 64},  # the miniature benchmark's videos are 64x48
                    "out_dir": str(REPO_ROOT / "runs" / "ablation-tiny")},
        env=OFFLINE_ENV, tags=["sample"]),
]


async def ensure_limits(client) -> None:
    """Work pool, YouTube rate limit (slot decay) and GPU tag limit, created if missing."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    from emotionclip.core.catalog import load_catalog
    from flows.tasks import GPU_TAG, YOUTUBE_RATE_LIMIT

    try:
        await client.read_work_pool(WORK_POOL)
    except ObjectNotFound:
        await client.create_work_pool(WorkPoolCreate(name=WORK_POOL, type="process"))
    per_min = load_catalog().stages.download.rate_limit_per_minute
    try:
        await client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(
            name=YOUTUBE_RATE_LIMIT, limit=max(1, int(per_min)), slot_decay_per_second=per_min / 60.0))
    except ObjectAlreadyExists:
        pass
    try:
        await client.read_concurrency_limit_by_tag(GPU_TAG)
    except ObjectNotFound:
        await client.create_concurrency_limit(tag=GPU_TAG, concurrency_limit=GPU_TAG_LIMIT)


def crash_detection_automation(heartbeat_s: int = HEARTBEAT_S) -> Any:
    """Prefect's recipe for zombie runs (docs: "detect zombie flows"): a flow run
    whose heartbeats stop without a final state is set to Crashed."""
    from datetime import timedelta

    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    within = UNRESPONSIVE_AFTER_HEARTBEATS * heartbeat_s
    return AutomationCore(
        name=CRASH_AUTOMATION,
        description=f"Marks a flow run Crashed when it sent no heartbeat for {within} s.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                    "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=within),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message=f"No heartbeat for {within} s: the run's process is gone "
                                            "(killed worker or lost machine). Re-run to resume.")],
    )


async def ensure_crash_detection(client: Any, heartbeat_s: int = HEARTBEAT_S) -> None:
    """(Re)install the crash-detection automation (replaced: its window follows `heartbeat_s`)."""
    for old in await client.read_automations_by_name(CRASH_AUTOMATION):
        await client.delete_automation(old.id)
    await client.create_automation(crash_detection_automation(heartbeat_s))


def register_deployments(extra_parameters: dict[str, Any] | None = None, heartbeat_s: int = HEARTBEAT_S) -> list[str]:
    """Register every deployment against the current PREFECT_API_URL; returns
    `<flow>/<deployment>` names. `extra_parameters` are merged into each
    deployment's default parameters (tests point data_root at a temp folder);
    runs send heartbeats every `heartbeat_s` seconds (>= 30)."""
    from prefect import Flow
    from prefect.client.orchestration import get_client

    async def _limits() -> None:
        async with get_client() as client:
            await ensure_limits(client)
            await ensure_crash_detection(client, heartbeat_s)

    asyncio.run(_limits())
    names = []
    for spec in DEPLOYMENTS:
        flow = Flow.from_source(source=str(REPO_ROOT), entrypoint=spec.flow_entrypoint)
        params = {**spec.parameters, **(extra_parameters or {})}
        if spec.flow_entrypoint != BUILD:
            params = {k: v for k, v in params.items() if k in (flow.parameters.properties or {})}
        flow.deploy(
            name=spec.name,
            work_pool_name=WORK_POOL,
            parameters=params,
            cron=spec.cron,
            concurrency_limit=spec.concurrency_limit,
            job_variables={"env": {**spec.env, "PYTHONPATH": str(REPO_ROOT),
                                   "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(heartbeat_s)},
                           "working_dir": str(REPO_ROOT)},
            description=spec.description,
            tags=spec.tags,
            print_next_steps=False,
            build=False,
            push=False,
        )
        names.append(f"{flow.name}/{spec.name}")
    return names


if __name__ == "__main__":
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    for n in register_deployments():
        print(n)
