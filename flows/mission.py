"""build-train-evaluate: the whole mission as one run.

    build-tv-dataset  ->  pretrain (on the manifests it wrote)  ->  linear-probe
                                                                    (on the checkpoint pretrain wrote)

Each step is a deployment run (tasks/mission.py), so pre-training goes to the GPU
work pool; each has its own state, logs and artifacts and is linked to this run
in the UI. A step that does not complete stops the chain, with its reason in this
run's state message. A re-run resumes: the build finds its stages up to date,
pretrain resumes from its newest checkpoint (resume="latest"), the probe finds
its feature cache.
"""

from __future__ import annotations

from typing import Any, Optional

from prefect import flow
from prefect.states import Completed, Failed, State

from emotionclip.core.catalog import manifests_location
from tasks.mission import Step, report, run_step


@flow(name="build-train-evaluate", log_prints=True)
def build_train_evaluate(
    build_deployment: str = "build-tv-dataset/sample-tiny",
    pretrain_deployment: str = "pretrain/tiny",
    probe_deployment: str = "linear-probe/sample",
    build: Optional[dict[str, Any]] = None,
    pretrain: Optional[dict[str, Any]] = None,
    probe: Optional[dict[str, Any]] = None,
) -> State:
    """Build the TV dataset, pre-train on it, evaluate the checkpoint: three deployment
    runs in order, each linked to this one.

    Args:
        build_deployment: The build-tv-dataset deployment of the first step.
        pretrain_deployment: The pretrain deployment; it gets the manifests and data root
            of the build.
        probe_deployment: The linear-probe deployment; it evaluates the newest checkpoint
            of the pretrain run's out_dir.
        build: Parameters for the build run, over its deployment's (e.g. {"max_videos": 20}).
        pretrain: Parameters for the pretrain run, over its deployment's (e.g. {"max_steps": 100}).
        probe: Parameters for the linear-probe run, over its deployment's.
    """
    steps: list[Step] = []

    def stop(step: Step) -> State:
        report(steps)
        return Failed(message=f"stopped at {step.reason}")

    built = run_step("build", build_deployment, build)
    steps.append(built)
    if not built.completed:
        return stop(built)
    b = built.parameters
    trained = run_step("pretrain", pretrain_deployment, {
        "manifests": manifests_location(b.get("catalog_path"), b.get("profile"), b.get("data_root"),
                                        b.get("overrides")),
        "data_root": b.get("data_root"), **(pretrain or {})})
    steps.append(trained)
    if not trained.completed:
        return stop(trained)
    probed = run_step("linear-probe", probe_deployment,
                      {"checkpoint_from_run": trained.parameters.get("out_dir"), **(probe or {})})
    steps.append(probed)
    if not probed.completed:
        return stop(probed)
    report(steps)
    return Completed(message=f"built ({built.run.name}), trained ({trained.run.name}), evaluated ({probed.run.name})")
