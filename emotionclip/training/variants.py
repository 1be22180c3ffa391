"""Ablation variants: what one row of an ablation study trains, and the hash that
names its output folder (the `ablation` flow's cache).

A variant is a small dict:

    {}                          the base config as it is
    {"ablation": "saam"}        a named row of paper Table 1 / Table 3 (emotionclip.training.ABLATIONS)
    {"beta": 1.0}               the SNCE strength (eq. 6); paper Fig. 6 sweeps it
    {"max_neutral": 0.2}        the neutral-score threshold of the clip filter (appendix A.2);
                                appendix Fig. 2 sweeps it. The manifests are re-filtered from
                                the per-video clips into a folder of the variant's own.
    {"overrides": {...}}        any other TrainConfig fields
    {"name": "..."}             a display name (default: made from the keys)

Keys combine (`{"ablation": "sap", "beta": 5}`). A variant's hash covers everything
that decides what it learns and how it is probed: its resolved TrainConfig (without
the locations and run-control fields in `HASH_EXCLUDED`), the probe settings, and
the content fingerprint of its training data (`manifests_fingerprint`; for a
re-filtered variant, the dataset's manifests plus the catalog fingerprint of the
filter). A finished variant writes `RESULT_FILE` into `<out_root>/<hash>/`; a later
run finds it there and trains nothing.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import fsspec
import pyarrow.parquet as pq

from emotionclip.core.catalog import load_catalog
from emotionclip.core.io import atomic_write_json, exists, fingerprint_output, open_file, read_json
from emotionclip.core.manifest_store import MANIFEST_FILE, catalog_fingerprint, manifest_info
from emotionclip.training.ablations import ABLATIONS
from emotionclip.training.config import TrainConfig, run_config

VARIANT_KEYS = ("name", "ablation", "beta", "max_neutral", "overrides")
RESULT_FILE = "result.json"
RESULT_FORMAT = "emotionclip-ablation-variant"
# Where re-filtered manifests go, under the data root: never the dataset's own manifests.
REFILTER_DIR = "ablation"
# Left out of the hash: where things are written (out_dir; manifests, which is replaced
# by its content fingerprint, and for a re-filtered variant contains the hash itself),
# how a run continues (resume), and DataLoader mechanics: a sample depends only on
# (seed, epoch, index), whatever worker loads it (emotionclip/training/dataset.py), so
# the same variant on a machine with other cores is still the same variant.
# compile/compile_backend: how the same model is executed, not which model (a cached
# variant stays valid when the default changes).
HASH_EXCLUDED: frozenset[str] = frozenset({"out_dir", "manifests", "resume", "num_workers", "pin_memory",
                                           "compile", "compile_backend"})
# The switches Table 1 and Table 3 vary; a config with a row's values of all of them
# is that row's setting (section 4.2).
PAPER_SWITCHES: tuple[str, ...] = ("subject_mode", "beta", "init_text", "init_frame", "freeze_text",
                                   "freeze_frame", "temporal")
# Tables 1 and 3 were trained on clips with neutral < 0.05 (appendix A.2): a variant
# re-filtered at another threshold is not the paper's setting.
PAPER_MAX_NEUTRAL = 0.05


@dataclass(frozen=True)
class Variant:
    """One parsed variant dict."""

    label: str
    spec: dict[str, Any]
    ablation: str | None = None
    train_overrides: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields (beta, overrides)
    max_neutral: float | None = None

    @property
    def kind(self) -> str:
        return variant_kind(self.spec)


def variant_kind(spec: Any) -> str:
    """Which sweep a variant dict belongs to: base ({}), ablation, beta, max_neutral
    (one key of that name), else custom."""
    keys = set(spec) - {"name"} if isinstance(spec, Mapping) else {"?"}
    if not keys:
        return "base"
    if len(keys) == 1:
        return {"ablation": "ablation", "beta": "beta", "max_neutral": "max_neutral"}.get(next(iter(keys)), "custom")
    return "custom"


def _fmt_value(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v)) if abs(v) < 1e15 else repr(v)
    return str(v)


def variant_label(spec: Any) -> str:
    """A display name for a variant dict, also for one that does not parse
    (a failed variant still gets its own flow run name)."""
    if not isinstance(spec, Mapping):
        return str(spec)
    if spec.get("name"):
        return str(spec["name"])
    parts = []
    for key in ("ablation", "beta", "max_neutral"):
        if key in spec:
            parts.append(str(spec[key]) if key == "ablation" else f"{key}={_fmt_value(spec[key])}")
    for k, v in sorted(dict(spec.get("overrides") or {}).items()):
        parts.append(f"{k}={_fmt_value(v)}")
    extra = sorted(set(spec) - set(VARIANT_KEYS))
    parts += [f"{k}={_fmt_value(spec[k])}" for k in extra]
    return ",".join(parts) or "base"


def parse_variant(spec: Any) -> Variant:
    """A variant dict -> Variant; ValueError for an unknown key or a value of the wrong type.
    The values themselves are checked where they are used (the TrainConfig, the catalog)."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"a variant is a dict such as {{'beta': 1.0}}, got {spec!r}")
    spec = dict(spec)
    unknown = sorted(set(spec) - set(VARIANT_KEYS))
    if unknown:
        raise ValueError(f"variant {spec}: unknown key(s) {unknown}; use {list(VARIANT_KEYS)}")
    overrides = spec.get("overrides") or {}
    if not isinstance(overrides, Mapping):
        raise ValueError(f"variant {spec}: overrides must be a dict of TrainConfig fields")
    train = dict(overrides)
    if "beta" in spec:
        train["beta"] = spec["beta"]
    ablation = spec.get("ablation")
    if ablation is not None and not isinstance(ablation, str):
        raise ValueError(f"variant {spec}: ablation must be a name, one of {list(ABLATIONS)}")
    max_neutral = spec.get("max_neutral")
    if max_neutral is not None:
        if isinstance(max_neutral, bool) or not isinstance(max_neutral, (int, float)):
            raise ValueError(f"variant {spec}: max_neutral must be a number in [0, 1]")
        max_neutral = float(max_neutral)
    return Variant(variant_label(spec), spec, ablation, train, max_neutral)


# -- data identity ---------------------------------------------------------------------------


def _shards(path: str) -> list[str]:
    if path.endswith(".parquet"):
        return [path]
    fs, root = fsspec.core.url_to_fs(path)
    found = sorted(fs.glob(f"{root.rstrip('/')}/clips-*.parquet"))
    if not found:
        raise FileNotFoundError(f"no manifest shards in {path}")
    return [p if "://" not in path else f"{path.split('://', 1)[0]}://{p}" for p in found]


def manifests_fingerprint(path: str) -> str:
    """The content identity of a manifests folder (or one shard file): the Parquet footer
    checksum of every shard, plus, for a folder with `_manifest.json`, the catalog
    fingerprint and counts recorded there (they cover the rejected clips too). The
    generation's name and time are left out: a rebuild with the same result keeps the
    fingerprint, so it does not invalidate the finished variants."""
    path = str(path)
    payload: dict[str, Any]
    if not path.endswith(".parquet") and exists(f"{path.rstrip('/')}/{MANIFEST_FILE}"):
        info = manifest_info(path)
        shards = [f"{path.rstrip('/')}/{s['path']}" for s in info["shards"]]
        payload = {"fingerprint": info.get("fingerprint"), "counts": info.get("counts"), "n_clips": info.get("n_clips")}
    else:
        shards = _shards(path)
        payload = {}
    payload["shards"] = [fingerprint_output(s)["sha256"] for s in shards]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def manifests_clip_count(path: str) -> int:
    """Clips in a manifests folder (from `_manifest.json`) or in its shard files."""
    path = str(path)
    if not path.endswith(".parquet") and exists(f"{path.rstrip('/')}/{MANIFEST_FILE}"):
        return int(manifest_info(path)["n_clips"])
    total = 0
    for shard in _shards(path):
        with open_file(shard, "rb") as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total


def refilter_overrides(max_neutral: float, variant_hash: str) -> dict[str, Any]:
    """Catalog overrides that re-filter the dataset's per-video clips at `max_neutral`
    into the variant's own manifests folder (with its own rejected and failures files),
    leaving the dataset's manifests alone. The clips cache stays shared: a changed
    threshold reads no clips file again."""
    base = f"{REFILTER_DIR}/{variant_hash}/manifests"
    return {"stages.filter.max_neutral": max_neutral, "artifacts.manifests": base,
            "artifacts.rejected": f"{base}/rejected.parquet", "artifacts.failures": f"{base}/failures.parquet"}


def variant_hash(config: TrainConfig, probe: Mapping[str, Any], data: Mapping[str, Any]) -> str:
    """16 hex digits naming a variant's output folder: its TrainConfig minus
    `HASH_EXCLUDED`, the probe settings and the identity of its training data."""
    payload = {"config": config.model_dump(mode="json", exclude=set(HASH_EXCLUDED)),
               "probe": dict(probe), "data": dict(data)}
    blob = json.dumps(payload, sort_keys=True, default=str, allow_nan=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def paper_ablation(config: TrainConfig) -> str | None:
    """The named ablation whose Table 1 / Table 3 switches the config has (None: a
    setting the paper reports no number for, e.g. beta = 1: Fig. 6's values were
    not extracted). The base paper config is `sap-snce`, the full model; beta = 0
    with SAP is the `sap` row (section 4.2.2: SNCE at beta 0 is the plain InfoNCE)."""
    defaults = TrainConfig()
    have = tuple(getattr(config, k) for k in PAPER_SWITCHES)
    for name, ab in ABLATIONS.items():
        want = tuple(ab.overrides.get(k, getattr(defaults, k)) for k in PAPER_SWITCHES)
        if have == want:
            return name
    return None


# -- a variant's plan and result ---------------------------------------------------------------


@dataclass(frozen=True)
class VariantPlan:
    """What a variant runs: the resolved config (with its output folder), where it
    trains from, and, for a re-filtered variant, the catalog overrides of the re-filter."""

    variant: Variant
    hash: str
    out_dir: str  # <out_root>/<hash>: pretrain/, probe/, result.json
    config: TrainConfig  # out_dir = <out_dir>/pretrain
    pretrain_overrides: dict[str, Any]  # TrainConfig fields the pretrain flow gets as `overrides`
    probe: dict[str, Any]
    data: dict[str, Any]  # the training data's identity (part of the hash)
    catalog_overrides: dict[str, Any] | None = None  # the re-filter; None: trains on the source manifests
    source_manifests: str = ""
    paper_ablation: str | None = None
    max_neutral: float | None = None  # the threshold of the training data

    @property
    def manifests(self) -> str:
        return self.config.manifests

    @property
    def probe_dir(self) -> str:
        return f"{self.out_dir}/probe"

    @property
    def result_path(self) -> str:
        return f"{self.out_dir}/{RESULT_FILE}"


def plan_variant(
    spec: Mapping[str, Any],
    *,
    out_root: str,
    preset: str = "paper",
    profile: str | None = None,
    manifests: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    max_steps: int | None = None,
    catalog: str | None = None,
    data_root: str | None = None,
    catalog_overrides: Mapping[str, Any] | None = None,
    probe: Mapping[str, Any] | None = None,
) -> VariantPlan:
    """Resolve one variant against the base config. Raises ValueError (pydantic's
    ValidationError is one) for a bad variant: an unknown key or ablation, a beta the
    config rejects, a threshold the catalog rejects; FileNotFoundError when the
    manifests are missing."""
    variant = parse_variant(spec)
    base_cat = dict(catalog_overrides or {})
    cat = load_catalog(catalog, profile=profile, data_root=data_root, overrides=base_cat)
    dataset_manifests = cat.artifact("manifests")
    source = str(manifests) if manifests else dataset_manifests
    train_overrides = {**dict(overrides or {}), **variant.train_overrides}
    probe = dict(probe or {})

    def config_for(manifests_path: str, out_dir: str) -> TrainConfig:
        # The same call as the pretrain flow's (flows/pretrain.py), so the config hashed
        # here is the one it trains with.
        return run_config(preset, variant.ablation, manifests=manifests_path, out_dir=out_dir, profile=profile,
                          catalog=catalog, data_root=data_root, resume="latest", max_steps=max_steps,
                          overrides=train_overrides)

    config = config_for(source, out_root)  # validates the variant before anything is read
    max_neutral = cat.stages.filter.max_neutral
    if variant.max_neutral is None:
        data: dict[str, Any] = {"manifests": manifests_fingerprint(source)}
    else:
        # Appendix Fig. 2: the same clips filtered at another neutral threshold. The
        # dataset's manifests stand for the state of its clips; the catalog fingerprint
        # covers the filter (and every stage parameter and model that made the clips).
        max_neutral = variant.max_neutral
        filtered = load_catalog(catalog, profile=profile, data_root=data_root,
                                overrides={**base_cat, "stages.filter.max_neutral": max_neutral})
        data = {"refilter_of": manifests_fingerprint(dataset_manifests),
                "catalog": catalog_fingerprint(filtered), "max_neutral": max_neutral}
    digest = variant_hash(config, probe, data)
    out_dir = f"{str(out_root).rstrip('/')}/{digest}"
    refilter: dict[str, Any] | None = None
    train_from = source
    if variant.max_neutral is not None:  # into a folder named by the hash, known only now
        refilter = {**base_cat, **refilter_overrides(variant.max_neutral, digest)}
        train_from = load_catalog(catalog, profile=profile, data_root=data_root,
                                  overrides=refilter).artifact("manifests")
    config = config_for(train_from, f"{out_dir}/pretrain")
    paper_row = paper_ablation(config)
    if variant.max_neutral is not None and not math.isclose(variant.max_neutral, PAPER_MAX_NEUTRAL):
        paper_row = None
    return VariantPlan(variant, digest, out_dir, config, train_overrides, probe, data, refilter, source,
                       paper_row, max_neutral)


def read_result(plan: VariantPlan) -> dict[str, Any] | None:
    """The finished variant's result, or None when it has not finished (no result file,
    an unreadable one, or one written for another hash)."""
    if not exists(plan.result_path):
        return None
    try:
        result = read_json(plan.result_path)
    except (OSError, ValueError):
        return None
    if not isinstance(result, dict) or result.get("format") != RESULT_FORMAT or result.get("hash") != plan.hash:
        return None
    return result


def make_result(plan: VariantPlan, *, kept_clips: int | None, train: Mapping[str, Any],
                metrics: Mapping[str, float | None], probe_results: str | None = None) -> dict[str, Any]:
    """The record a finished variant writes (and the ablation table is made from)."""
    v = plan.variant
    return {
        "format": RESULT_FORMAT, "hash": plan.hash, "variant": v.label, "spec": v.spec, "kind": v.kind,
        "ablation": plan.config.ablation, "paper_ablation": plan.paper_ablation, "beta": plan.config.beta,
        "max_neutral": plan.max_neutral, "kept_clips": kept_clips, "manifests": plan.manifests,
        "out_dir": plan.out_dir, "checkpoint": train.get("checkpoint"), "step": train.get("step"),
        "loss": train.get("loss"), "probe_results": probe_results,
        # NaN is not JSON: a metric the probe could not score is null
        "metrics": {k: (None if v is None or not math.isfinite(float(v)) else float(v)) for k, v in metrics.items()},
        "config": plan.config.model_dump(mode="json"), "probe": plan.probe, "data": plan.data,
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def write_result(plan: VariantPlan, result: Mapping[str, Any]) -> str:
    """Written last, atomically: its presence is what makes the variant done."""
    atomic_write_json(plan.result_path, dict(result))
    return plan.result_path
