"""The deployments of this project, on two process work pools: `emotionclip` (the
local worker `python -m deployments.local up` starts) and `emotionclip-gpu` (workers
started on GPU machines; only pretrain/paper runs there).

    build-tv-dataset/youtube-paper   YouTube search, paper models, weekly schedule
    build-tv-dataset/sample-tiny     bundled sample corpus, tiny models, offline
    process-videos/batch             one batch of a build-tv-dataset run (batch_runs="deployment")
    pretrain/paper                   paper preset and profile, torchrun over `devices` GPUs (GPU pool)
    pretrain/tiny                    a few steps on the sample manifests (tiny model), offline
    linear-probe/paper               the five benchmarks (folders filled in per run), a checkpoint
    linear-probe/sample              miniature synthetic benchmarks (generated if missing), tiny
                                     profile, pretrain/tiny's newest checkpoint if any, offline
    ablation/tiny                    two variants (base, beta 1) pre-trained and probed, tiny, offline
    build-train-evaluate/sample      the mission on the sample: sample-tiny -> pretrain/tiny ->
                                     linear-probe/sample, each a run linked to this one, offline
    build-train-evaluate/paper       the mission for real: youtube-paper -> pretrain/paper (GPU
                                     pool) -> linear-probe/paper

`make demo` starts one run, DEMO (build-train-evaluate/sample), and watches it to its end.

`register_deployments()` creates the work pools, the global YouTube rate limit and
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
# Process pool for runs that need a GPU machine; nothing starts its workers locally.
GPU_WORK_POOL = "emotionclip-gpu"
GPU_LIMIT_SLOTS = 1  # one model stage at a time per GPU by default
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
    work_pool: str = WORK_POOL

    @property
    def full_name(self) -> str:
        """`<flow>/<deployment>`, as `prefect deployment run` takes it."""
        return f"{FLOW_NAMES[self.flow_entrypoint]}/{self.name}"


BUILD = "flows/build_tv_dataset.py:build_tv_dataset"
# One batch of build-tv-dataset's videos, run on any worker (its batch_runs="deployment").
BATCH = "flows/build_tv_dataset.py:process_videos"
PAPER_VIDEOS = 3613  # the paper's dataset: 3,613 TV series videos (section 3.1)
# The sample corpus with random tiny models: see the sample-tiny description.
SAMPLE_OVERRIDES = {"stages.filter.max_neutral": 0.5, "stages.humans.imgsz": 320}
# pretrain/tiny's steps: one epoch of the tiny profile's batch 16 on the sample's ~79 clips,
# which writes the epoch-end checkpoint linear-probe/sample evaluates; short for `make demo`.
DEMO_PRETRAIN_STEPS = 4
SAMPLE_C_TRIALS = 8
# pretrain/tiny writes here; linear-probe/sample evaluates the newest checkpoint here.
TINY_RUN = str(REPO_ROOT / "runs" / "pretrain-tiny")

PROBE = "flows/linear_probe.py:linear_probe"
PRETRAIN = "flows/pretrain.py:pretrain"
ABLATION = "flows/ablation.py:ablation"
MISSION = "flows/mission.py:build_train_evaluate"
# The @flow names of the entrypoints (what the UI and `prefect deployment run` show);
# tests/test_flow_parameters.py checks them against the flows.
FLOW_NAMES = {BUILD: "build-tv-dataset", BATCH: "process-videos", PRETRAIN: "pretrain", PROBE: "linear-probe",
              ABLATION: "ablation", MISSION: "build-train-evaluate"}
# Placeholders in each benchmark's published folder name, for the user to replace.
PAPER_BENCHMARK_ROOTS = {"bold": "/data/BOLD_public", "moviegraphs": "/data/MovieGraphs", "meld": "/data/MELD.Raw",
                         "emotic": "/data/emotic", "liris": "/data/LIRIS-ACCEDE"}

# The steps of build-train-evaluate/sample, in order: the sample dataset, a few training
# steps on it, the probe of that checkpoint.
DEMO_CHAIN = ("build-tv-dataset/sample-tiny", "pretrain/tiny", "linear-probe/sample")
# The one run `make demo` starts (the Makefile's demo target; a test checks they agree).
DEMO = "build-train-evaluate/sample"

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
        BATCH, "batch",
        "One batch of build-tv-dataset's videos (named batch-0001-of-0073): every per-video stage, "
        "a stage found up to date skipped from its marker. Started by build-tv-dataset runs with "
        "batch_runs=deployment, one run per batch, so any number of workers on any machines (on a "
        "shared data root) share the work; a failed batch run retries by itself. Not meant to be "
        "started by hand.",
        tags=["batch"],
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
        "tiny random-weight model; C by the paper's random search with 8 trials (32 in the paper's "
        "protocol, the flow's default). The media are test patterns, not people, so the numbers only "
        "show that the path works. The sample videos are 64x48, so detection runs at imgsz 64.",
        parameters={"datasets": {}, "samples": ["bold", "moviegraphs", "meld", "emotic", "liris"],
                    "sample_size": "small", "profile": "tiny", "det_imgsz": 64,
                    # the paper's random search over C, 8 trials instead of 32 (a third of
                    # the probe's time in `make demo`)
                    "c_trials": SAMPLE_C_TRIALS,
                    "checkpoint_from_run": TINY_RUN,  # pretrain/tiny's out_dir
                    "out_dir": str(REPO_ROOT / "runs" / "linear-probe-sample")},
        env=OFFLINE_ENV,
        tags=["sample"],
    ),
    DeploymentSpec(
        PRETRAIN, "paper",
        "Pre-training with the paper's recipe (appendix B.2: 25 epochs, batch 128, AdamW) and the "
        "paper profile's model (ViT-B/32 from OpenCLIP, weights fetched on first use) on the manifests of "
        "build-tv-dataset/youtube-paper, on the GPU work pool `emotionclip-gpu`. `devices` = GPUs of the "
        "worker's machine (torchrun processes on that node; batch_size stays global). Start a worker on a "
        "GPU machine: a checkout at the same path as this one (or set the `working_dir` job variable) with "
        "`make install`, the same data root (a shared folder or an fsspec URL), a server it can reach (README, "
        "\"More than one machine\"), then `PREFECT_API_URL=http://<server>:4200/api "
        ".venv/bin/prefect worker start --pool emotionclip-gpu --type process --limit 1`. "
        "A re-run resumes from the newest checkpoint in out_dir.",
        parameters={"preset": "paper", "profile": "paper", "devices": 1,
                    "out_dir": str(REPO_ROOT / "runs" / "pretrain-paper")},
        tags=["paper"],
        work_pool=GPU_WORK_POOL),
    DeploymentSpec(
        PRETRAIN, "tiny",
        "Pre-train the tiny model on the sample manifests for a few steps (smoke test of the training "
        "path, the tiny profile's batch of 16): run build-tv-dataset/sample-tiny first. Offline; "
        "checkpoints in runs/pretrain-tiny/, which linear-probe/sample evaluates. A re-run resumes "
        "from the newest checkpoint: raise max_steps in a custom run to train further.",
        parameters={"profile": "tiny", "out_dir": TINY_RUN,
                    "max_steps": DEMO_PRETRAIN_STEPS},
        env=OFFLINE_ENV, tags=["sample"]),
    DeploymentSpec(
        ABLATION, "tiny",
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
    DeploymentSpec(
        MISSION, "sample",
        "The whole mission on the bundled sample, offline, as one run: build-tv-dataset/sample-tiny, "
        "then pretrain/tiny on the manifests it wrote, then linear-probe/sample on the checkpoint pretrain "
        "wrote. Each step is its own run (state, logs, artifacts) linked to this one; a step that does not "
        "complete stops the chain with its reason. A re-run resumes (stages up to date, training from its "
        "newest checkpoint, the probe's feature cache). `make demo` starts this.",
        parameters=dict(zip(("build_deployment", "pretrain_deployment", "probe_deployment"), DEMO_CHAIN)),
        env=OFFLINE_ENV, tags=["sample"]),
    DeploymentSpec(
        MISSION, "paper",
        "The whole mission for real, as one run: build-tv-dataset/youtube-paper (YouTube, the paper's "
        "models), then pretrain/paper on its manifests (the GPU work pool `emotionclip-gpu`: it waits until a "
        "GPU worker takes it, see pretrain/paper), then linear-probe/paper on the checkpoint (fill in its "
        "`datasets` under `probe`, e.g. {\"datasets\": {\"bold\": \"/data/BOLD_public\"}, \"device\": "
        "\"cuda\"}). Steps are linked runs; a failed step stops the chain with its reason; a re-run resumes.",
        parameters={"build_deployment": "build-tv-dataset/youtube-paper", "pretrain_deployment": "pretrain/paper",
                    "probe_deployment": "linear-probe/paper"},
        tags=["paper"]),
]



def deployment(full_name: str) -> DeploymentSpec:
    """The spec of `<flow>/<deployment>`."""
    for spec in DEPLOYMENTS:
        if spec.full_name == full_name:
            return spec
    raise KeyError(f"no deployment {full_name!r}; known: {[s.full_name for s in DEPLOYMENTS]}")


async def ensure_limits(client) -> None:
    """Work pools (CPU and GPU), the YouTube rate limit (slot decay) and the GPU limit, created if missing."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    from emotionclip.core.catalog import load_catalog
    from tasks.limits import GPU_LIMIT, YOUTUBE_RATE_LIMIT

    for pool in (WORK_POOL, GPU_WORK_POOL):
        try:
            await client.read_work_pool(pool)
        except ObjectNotFound:
            try:
                await client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
            except ObjectAlreadyExists:  # registered concurrently
                pass
    per_min = load_catalog().stages.download.rate_limit_per_minute
    try:
        await client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(
            name=YOUTUBE_RATE_LIMIT, limit=max(1, int(per_min)), slot_decay_per_second=per_min / 60.0))
    except ObjectAlreadyExists:
        pass
    # The one GPU throttle: model stages take a slot only while they really run (tasks/limits.py).
    try:
        await client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=GPU_LIMIT, limit=GPU_LIMIT_SLOTS))
    except ObjectAlreadyExists:
        pass


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
            work_pool_name=spec.work_pool,
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
