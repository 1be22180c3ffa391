"""Every deployed flow explains its parameters (the UI's "Custom run" form shows each
one's type and description, filled from the docstring's `Args:` section), and every
deployment's parameters fit its flow's schema. No server: the schema Prefect sends
with a deployment is the flow's `parameters`."""

from __future__ import annotations

import inspect
import subprocess
from functools import cache

import pytest
from prefect import Flow
from prefect.flows import load_flow_from_entrypoint
from prefect.utilities.callables import parameter_docstrings
from prefect.utilities.schema_tools.validation import validate

from deployments.definitions import DEMO, DEMO_CHAIN, DEPLOYMENTS, FLOW_NAMES, GPU_WORK_POOL, WORK_POOL, deployment
from emotionclip.core.catalog import REPO_ROOT

ENTRYPOINTS = sorted({s.flow_entrypoint for s in DEPLOYMENTS})
# How JSON schema says what a value is (Optional[X] is an anyOf, a pydantic model a $ref).
TYPE_KEYS = ("type", "anyOf", "allOf", "$ref", "enum")


@cache
def _flow(entrypoint: str) -> Flow:
    return load_flow_from_entrypoint(str(REPO_ROOT / entrypoint))


@pytest.mark.parametrize("entrypoint", ENTRYPOINTS)
def test_every_parameter_has_a_type_and_a_description(entrypoint):
    flow = _flow(entrypoint)
    assert FLOW_NAMES[entrypoint] == flow.name
    props = flow.parameters.properties
    assert set(props) == set(inspect.signature(flow.fn).parameters)
    untyped = [k for k, v in props.items() if not any(t in v for t in TYPE_KEYS)]
    undescribed = [k for k, v in props.items() if not (v.get("description") or "").strip()]
    assert not untyped, f"{flow.name}: no type for {untyped}"
    assert not undescribed, f"{flow.name}: no description for {undescribed} (add them to the docstring's Args:)"


@pytest.mark.parametrize("entrypoint", ENTRYPOINTS)
def test_documented_parameters_exist(entrypoint):
    """A renamed parameter left in `Args:` would describe nothing (Prefect drops it silently)."""
    flow = _flow(entrypoint)
    documented = set(parameter_docstrings(inspect.getdoc(flow.fn)))
    assert documented <= set(inspect.signature(flow.fn).parameters), documented - set(flow.parameters.properties)


@pytest.mark.parametrize("spec", DEPLOYMENTS, ids=lambda s: s.full_name)
def test_deployment_parameters_fit_the_flow(spec):
    flow = _flow(spec.flow_entrypoint)
    schema = flow.parameters.model_dump(mode="json", by_alias=True)
    unknown = set(spec.parameters) - set(schema["properties"])
    assert not unknown, f"{spec.full_name}: {unknown} are not parameters of {flow.name}"
    # what the server checks when a run is created (enforce_parameter_schema), and what
    # the flow checks when it starts
    validate(spec.parameters, schema, raise_on_error=True, ignore_required=False)
    flow.validate_parameters(dict(spec.parameters))
    assert spec.description.strip()


def test_the_deployments_and_their_pools():
    assert sorted(s.full_name for s in DEPLOYMENTS) == sorted([
        "build-tv-dataset/youtube-paper", "build-tv-dataset/sample-tiny", "process-videos/batch",
        "pretrain/paper", "pretrain/tiny",
        "linear-probe/paper", "linear-probe/sample", "ablation/tiny",
        "build-train-evaluate/sample", "build-train-evaluate/paper"])
    assert {s.full_name for s in DEPLOYMENTS if s.work_pool == GPU_WORK_POOL} == {"pretrain/paper"}
    assert {s.work_pool for s in DEPLOYMENTS} == {WORK_POOL, GPU_WORK_POOL}
    paper = deployment("pretrain/paper").parameters
    assert (paper["preset"], paper["profile"], paper["devices"]) == ("paper", "paper", 1)
    # the tiny profile's own batch and epochs (emotionclip/training/config.py), a few steps
    tiny = deployment("pretrain/tiny").parameters
    assert "overrides" not in tiny and tiny["profile"] == "tiny" and tiny["max_steps"] >= 1


def test_make_demo_starts_one_run_of_the_demo_chain():
    """The Makefile's demo target starts exactly one deployment run, DEMO, whose steps are
    DEMO_CHAIN's deployments, each on the sample data of the one before (pretrain/tiny on
    sample-tiny's manifests, the probe on its checkpoint); all offline."""
    out = subprocess.run(["make", "-n", "demo"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    runs = [line.split("deployment run ", 1)[1].split()[0] for line in out.stdout.splitlines()
            if "deployment run " in line]
    assert runs == [DEMO]
    steps = deployment(DEMO).parameters
    assert (steps["build_deployment"], steps["pretrain_deployment"], steps["probe_deployment"]) == DEMO_CHAIN
    paper = deployment("build-train-evaluate/paper").parameters
    assert (paper["build_deployment"], paper["pretrain_deployment"], paper["probe_deployment"]) == (
        "build-tv-dataset/youtube-paper", "pretrain/paper", "linear-probe/paper")
    assert all(deployment(name).env.get("HF_HUB_OFFLINE") == "1" for name in (DEMO, *DEMO_CHAIN))
    assert (deployment("linear-probe/sample").parameters["checkpoint_from_run"]
            == deployment("pretrain/tiny").parameters["out_dir"])
