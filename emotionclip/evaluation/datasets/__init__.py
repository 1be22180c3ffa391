"""Downstream benchmarks, one module per dataset, each parsing its published
layout into a common `Sample` list and offering `inspect(root)`."""

from __future__ import annotations

from types import ModuleType

from emotionclip.evaluation.datasets import bold, emotic, liris, meld, moviegraphs
from emotionclip.evaluation.datasets.base import (
    BOLD_CATEGORIES, EMOTIC_CATEGORIES, DatasetLayoutError, DatasetSpec, Sample, inspect_dataset, media_problem,
)

MODULES: dict[str, ModuleType] = {m.NAME: m for m in (bold, meld, emotic, moviegraphs, liris)}
ALIASES = {"mg": "moviegraphs", "la": "liris", "liris-accede": "liris", "liris_accede": "liris"}
NAMES = tuple(MODULES)


def get_module(name: str) -> ModuleType:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in MODULES:
        raise KeyError(f"unknown dataset {name!r}; expected one of {', '.join(NAMES)}")
    return MODULES[key]


def get_spec(name: str) -> DatasetSpec:
    return get_module(name).SPEC


__all__ = ["BOLD_CATEGORIES", "EMOTIC_CATEGORIES", "DatasetLayoutError", "DatasetSpec", "MODULES", "NAMES",
           "Sample", "get_module", "get_spec", "inspect_dataset", "media_problem"]
