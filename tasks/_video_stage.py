"""One factory for the per-video stage tasks, so each tasks/<stage>.py is one line
and the stage logic stays in emotionclip.stages.registry (written once).

Caching: the task's cache key is the stage key of emotionclip.stages.registry (inputs,
parameters, model, output location). A re-run with the same key is reported as
Cached by Prefect and nothing runs (no model load). If the outputs were removed
after the record was written, the key is salted so the stage runs again.
"""

from __future__ import annotations

import uuid
from typing import Any

from prefect import task
from prefect.context import TaskRunContext

from emotionclip.core.catalog import Catalog
from emotionclip.stages.registry import VIDEO_STAGES, is_up_to_date, run_stage, stage_key

GPU_TAG = "gpu"  # `prefect concurrency-limit create gpu N` caps model stages


def _cache_key(stage: str):
    def key_fn(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
        catalog: Catalog = parameters["catalog"]
        video_id: str = parameters["video_id"]
        try:
            key = f"emotionclip-{stage}-{video_id}-{stage_key(catalog, stage, video_id)}"
        except Exception:
            return None  # inputs missing: let the task run and report the error
        if not is_up_to_date(catalog, stage, video_id) and context.result_store.exists(key):
            # A record exists but the outputs are gone: run again under a fresh key.
            return f"{key}-{uuid.uuid4().hex[:8]}"
        return key

    return key_fn


def video_stage_task(stage: str):
    """A Prefect task running `emotionclip.stages.registry.run_stage(catalog, stage, video_id)`."""
    spec = VIDEO_STAGES[stage]

    def run(catalog: Catalog, video_id: str) -> dict:
        return run_stage(catalog, stage, video_id)

    run.__name__ = stage
    run.__doc__ = f"Per-video stage `{stage}` (emotionclip.stages.registry)."
    return task(
        run,
        name=stage,
        task_run_name=f"{stage}-{{video_id}}",
        tags=[GPU_TAG] if spec.uses_model else [],
        cache_key_fn=_cache_key(stage),
        persist_result=True,
        retries=0,  # local computation: a retry would fail the same way
    )
