"""The `ablation` flow: variants of one config pre-trained and probed as subflows
(paper Table 1 / Table 3 rows, the beta sweep of Fig. 6, the neutral-threshold sweep
of appendix Fig. 2), cached by the hash of their resolved config.

The dataset is real and small: two generated sample videos through every stage with
the tiny models, manifests built by the manifests stage; the benchmark a miniature
BoLD (`make_sample(..., n_per_split=4)`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from emotionclip.core.catalog import load_catalog
from emotionclip.core.manifest_store import read_manifests, write_manifests
from emotionclip.training.config import TrainConfig, make_config
from emotionclip.training.variants import (
    HASH_EXCLUDED, manifests_fingerprint, paper_ablation, parse_variant, plan_variant, variant_hash, variant_label,
)

# Random tiny models score neutral anywhere in 0.15-0.99 and the 12 s sample videos have
# short sentences: the dataset keeps every clip of at least 0.5 s and 4 frames whatever
# its neutral score, so a variant at a lower threshold keeps fewer (appendix Fig. 2).
CATALOG_OVERRIDES = {"stages.filter.max_neutral": 1.0, "stages.filter.min_duration_s": 0.5,
                     "stages.filter.min_frames": 4, "stages.humans.imgsz": 160}
NEUTRAL = 0.6
# One optimizer step of 2 clips per variant: the code path, not a training run.
TRAIN = {"batch_size": 2, "num_workers": 0, "epochs": 1}
PROBE = {"c_mode": "preset", "det_imgsz": 64}  # the authors' fixed C; the sample videos are 64x48


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict[str, Any]:
    from emotionclip.evaluation.sample import make_sample
    from emotionclip.sample import make_sample_corpus
    from emotionclip.stages.download import import_local_folder
    from emotionclip.stages.manifests import build_manifests
    from emotionclip.stages.registry import VIDEO_STAGES, done_video_ids, run_stage

    base = tmp_path_factory.mktemp("ablation")
    make_sample_corpus(base / "src", n_videos=2, duration_s=12.0)
    data = base / "data"
    cat = load_catalog(profile="tiny", data_root=str(data), overrides=CATALOG_OVERRIDES)
    for vid in import_local_folder(cat, base / "src").video_ids:
        for stage in VIDEO_STAGES:
            run_stage(cat, stage, vid)
    build_manifests(cat, done_video_ids(cat))
    # where the flow looks for its default benchmark (as linear-probe/sample): made here smaller
    make_sample("bold", data / "eval-samples" / "bold", n_per_split=4)
    return {"base": base, "data": data, "manifests": Path(cat.artifact("manifests")), "catalog": cat}


def _plan(dataset: dict[str, Any], spec: dict[str, Any], **kw: Any):
    args = {"out_root": str(dataset["base"] / "runs"), "profile": "tiny", "data_root": str(dataset["data"]),
            "overrides": TRAIN, "max_steps": 1, "catalog_overrides": CATALOG_OVERRIDES, "probe": PROBE, **kw}
    return plan_variant(spec, **args)


def _changed(name: str, v: Any) -> Any:
    """Another value of the field's kind (the hash only reads the dumped config)."""
    if v is None:
        return 7 if "int" in str(TrainConfig.model_fields[name].annotation) else "other"
    if isinstance(v, bool):
        return not v
    if isinstance(v, (int, float)):
        return v + 1
    if isinstance(v, tuple):
        return tuple(x + 0.01 for x in v)
    return f"{v}-other"


def test_variant_hash_is_stable_and_changes_with_any_config_value(dataset):
    first, again = _plan(dataset, {"beta": 1.0}), _plan(dataset, {"beta": 1.0})
    assert first.hash == again.hash and len(first.hash) == 16
    assert first.out_dir.endswith(first.hash) and first.config.out_dir == f"{first.out_dir}/pretrain"
    # an equal config written another way is the same variant
    assert _plan(dataset, {"overrides": {"beta": 1}}).hash == first.hash
    others = {_plan(dataset, {"beta": 2.0}).hash, _plan(dataset, {"beta": 1.0}, max_steps=2).hash,
              _plan(dataset, {"beta": 1.0}, probe={**PROBE, "seed": 1}).hash,
              _plan(dataset, {"max_neutral": NEUTRAL}).hash, _plan(dataset, {"max_neutral": 0.5}).hash,
              _plan(dataset, {"ablation": "saam", "beta": 1.0}).hash}
    assert first.hash not in others and len(others) == 6

    config = first.config
    base = variant_hash(config, first.probe, first.data)
    for name, value in config.model_dump().items():
        h = variant_hash(config.model_copy(update={name: _changed(name, value)}), first.probe, first.data)
        assert (h == base) == (name in HASH_EXCLUDED), name
    assert variant_hash(config, first.probe, {"manifests": "0" * 16}) != base


def test_manifests_fingerprint_follows_content_not_generation(dataset, tmp_path):
    df = read_manifests(dataset["manifests"])
    write_manifests(df, tmp_path / "a")
    write_manifests(df, tmp_path / "b")  # same clips, another generation name and time
    write_manifests(df.iloc[1:], tmp_path / "c")
    fp = manifests_fingerprint(str(tmp_path / "a"))
    assert fp == manifests_fingerprint(str(tmp_path / "b")) != manifests_fingerprint(str(tmp_path / "c"))
    shard = next((tmp_path / "a").glob("v-*/clips-*.parquet"))
    assert len(manifests_fingerprint(str(shard))) == 16


def test_bad_variants_fail_while_planning(dataset):
    with pytest.raises(ValueError, match="unknown ablation 'nope'"):
        _plan(dataset, {"ablation": "nope"})
    with pytest.raises(ValueError, match="beta"):  # eq. 6: beta >= 0
        _plan(dataset, {"beta": -1.0})
    with pytest.raises(ValueError, match="unknown key"):
        parse_variant({"betta": 1.0})
    with pytest.raises(ValueError, match="max_neutral"):  # a threshold the catalog rejects (0..1)
        _plan(dataset, {"max_neutral": 2.0})
    assert variant_label({"beta": -1.0}) == "beta=-1" and variant_label({}) == "base"
    assert variant_label({"ablation": "nope"}) == "nope"


def test_configs_find_their_paper_row():
    # Table 1: the full model and SAP with the plain CLIP loss (beta 0, section 4.2.2)
    assert paper_ablation(TrainConfig()) == "sap-snce"
    assert paper_ablation(TrainConfig(beta=0.0)) == "sap"
    assert paper_ablation(make_config("paper", ablation="text-frozen")) == "text-frozen"  # Table 3
    assert paper_ablation(TrainConfig(beta=1.0)) is None  # Fig. 6: no number extracted


def test_the_tiny_deployment_fits_the_flow():
    import inspect

    from deployments.definitions import DEPLOYMENTS
    from flows.ablation import PROBE_SETTINGS, ablation

    spec = next(s for s in DEPLOYMENTS if s.flow_entrypoint == "flows/ablation.py:ablation")
    assert spec.name == "tiny" and spec.env["HF_HUB_OFFLINE"] == "1"
    assert set(spec.parameters) <= set(inspect.signature(ablation.fn).parameters)
    assert set(spec.parameters["probe"]) <= set(PROBE_SETTINGS)
    assert [parse_variant(v).kind for v in spec.parameters["variants"]] == ["base", "beta"]


def _pretrain_runs() -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["pretrain"])))
    return {str(r.id): r.name for r in runs}


def _flow_run_states(name: str) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))
    return [r.state.type.value for r in runs if r.state is not None]


@pytest.mark.slow
def test_ablation_flow_end_to_end_caches_and_records_failures(dataset):
    from prefect.artifacts import Artifact

    from flows.ablation import ablation

    data, main = dataset["data"], dataset["manifests"]
    protected = {p: p.read_bytes() for p in (main / "_manifest.json", main / "rejected.parquet",
                                             main / "failures.parquet")}
    out = dataset["base"] / "runs"
    kw = dict(out_dir=str(out), profile="tiny", data_root=str(data), overrides=TRAIN, max_steps=1,
              catalog_overrides=CATALOG_OVERRIDES, probe=PROBE)

    first = ablation([{"beta": 1.0}, {"max_neutral": NEUTRAL}], **kw)
    assert first["trained"] == ["beta=1", "max_neutral=0.6"] and first["cached"] == [] == first["failed"]
    table = pd.read_parquet(first["paths"]["parquet"])
    assert list(table["variant"]) == ["beta=1", "max_neutral=0.6"] and (table["status"] == "done").all()
    assert {"bold/val/mAP", "bold/val/AUC", "bold/val/R2"} <= set(table.columns)
    assert table["bold/val/mAP"].notna().all() and table["bold/val/mAP paper"].isna().all()  # no paper row
    md = Path(first["paths"]["markdown"]).read_text()
    assert "beta=1" in md and "max_neutral=0.6" in md and "ablation-beta.png" in md
    for key in ("beta", "neutral"):  # Fig. 6 and appendix Fig. 2
        assert Path(first["paths"][key]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The neutral variant re-filtered the clips: its kept count is the dataset's clips under the
    # threshold, in manifests of its own; the dataset's manifests are untouched.
    all_clips = read_manifests(main)
    expected = int((all_clips["neutral"] < NEUTRAL).sum())
    assert 2 <= expected < len(all_clips)
    rec = {r["variant"]: r for r in first["variants"]}
    neutral, beta = rec["max_neutral=0.6"], rec["beta=1"]
    assert neutral["kept_clips"] == expected and beta["kept_clips"] == len(all_clips)
    assert table.set_index("variant").loc["max_neutral=0.6", "kept_clips"] == expected
    assert Path(neutral["manifests"]) == data / "ablation" / neutral["hash"] / "manifests"
    assert len(read_manifests(neutral["manifests"])) == expected
    assert all(p.read_bytes() == b for p, b in protected.items())
    assert json.loads((out / beta["hash"] / "result.json").read_text())["hash"] == beta["hash"]

    # Prefect: each variant a subflow of its own name, with its pretrain and probe subflows
    assert _flow_run_states("max_neutral=0.6") == ["COMPLETED"]
    assert set(_pretrain_runs().values()) >= {"beta=1-pretrain", "max_neutral=0.6-pretrain"}
    comparison = Artifact.get("ablation-comparison")
    assert comparison is not None and comparison.type == "table" and "max_neutral=0.6" in comparison.data
    report = Artifact.get("ablation-report")
    assert report is not None and "ablation-neutral.png" in report.data and "ablation-beta.png" in report.data

    # Again with a named ablation (Table 1) and a beta the config rejects: only the new
    # variant trains, the failing one is recorded, the others finish.
    before = _pretrain_runs()
    second = ablation([{"beta": 1.0}, {"max_neutral": NEUTRAL}, {"ablation": "vanilla"}, {"beta": -1.0}], **kw)
    assert second["cached"] == ["beta=1", "max_neutral=0.6"]
    assert second["trained"] == ["vanilla"] and second["failed"] == ["beta=-1"]
    new_runs = {i: n for i, n in _pretrain_runs().items() if i not in before}
    assert list(new_runs.values()) == ["vanilla-pretrain"]
    assert _flow_run_states("beta=-1") == ["FAILED"]
    rec = {r["variant"]: r for r in second["variants"]}
    assert rec["max_neutral=0.6"]["kept_clips"] == expected
    assert "beta" in rec["beta=-1"]["error"] and "greater than or equal to 0" in rec["beta=-1"]["error"]
    table = pd.read_parquet(second["paths"]["parquet"]).set_index("variant")
    assert list(table.index) == ["beta=1", "max_neutral=0.6", "vanilla", "beta=-1"]
    assert list(table["status"]) == ["done", "done", "done", "failed"]
    assert list(table["cached"]) == [True, True, False, False]
    # the Table 1 vanilla row beside ours (mAP 21.97, AUC 68.85, R2 0.130)
    vanilla = table.loc["vanilla"]
    assert vanilla["paper_row"] == "Table 1: EmotionCLIP (vanilla)"
    assert (vanilla["bold/val/mAP paper"], vanilla["bold/val/AUC paper"], vanilla["bold/val/R2 paper"]) == \
        (21.97, 68.85, 0.130)
    assert pd.notna(vanilla["bold/val/mAP"])
    assert "greater than or equal to 0" in Path(second["paths"]["markdown"]).read_text()
    assert all(p.read_bytes() == b for p, b in protected.items())
