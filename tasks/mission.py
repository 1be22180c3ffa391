"""The steps of build-train-evaluate (flows/mission.py): each step is a run of a
deployment, started with `run_deployment` so that it runs on its own work pool
(pre-training on the GPU pool) as its own tracked flow run (state, logs,
artifacts), linked to the parent run in the UI (`as_subflow`: Prefect records a
task run in the parent for it). The parent waits for each step; a step that does
not complete stops the chain with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from prefect import get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment


@dataclass
class Step:
    """One finished step: its run, and the parameters it ran with (the deployment's
    defaults with this run's overrides, as the server merged them)."""

    label: str
    deployment: str
    run: FlowRun

    @property
    def completed(self) -> bool:
        return self.run.state is not None and self.run.state.is_completed()

    @property
    def parameters(self) -> dict[str, Any]:
        return dict(self.run.parameters or {})

    @property
    def reason(self) -> str:
        """Why the step did not complete (its final state and message)."""
        state = self.run.state
        if state is None:
            return f"{self.label} ({self.deployment}) run {self.run.name} has no state"
        return f"{self.label} ({self.deployment}) run {self.run.name} ended {state.name}: {state.message or ''}".strip()


def run_step(label: str, deployment: str, parameters: Optional[dict[str, Any]] = None) -> Step:
    """Start a run of `deployment` (`<flow>/<name>`) with `parameters` over its defaults
    and wait for its end (no timeout: pre-training takes days)."""
    from prefect.runtime import flow_run

    logger = get_run_logger()
    logger.info("%s: starting %s", label, deployment)
    # named after the mission's run and the step (e.g. radical-kiwi-pretrain): the UI's run list reads as a chain
    run = run_deployment(deployment, parameters={k: v for k, v in (parameters or {}).items() if v is not None},
                         flow_run_name=f"{flow_run.name}-{label}" if flow_run.name else None,
                         timeout=None, as_subflow=True)
    step = Step(label, deployment, run)
    logger.info("%s: %s run %s ended %s", label, deployment, run.name, run.state.name if run.state else "?")
    return step


def report(steps: list[Step]) -> None:
    """The `build-train-evaluate` table artifact: each step's run, state and message."""
    create_table_artifact(
        key="build-train-evaluate",
        table=[{"step": s.label, "deployment": s.deployment, "run": s.run.name, "run_id": str(s.run.id),
                "state": s.run.state.name if s.run.state else "", "message": (s.run.state.message or "")
                if s.run.state else ""} for s in steps],
        description="build -> pretrain -> linear-probe: the runs of this mission")
