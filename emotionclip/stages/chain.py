"""The per-video chain: the per-video stages (`registry.VIDEO_STAGES`) over a set
of videos, stage by stage (stage-major), a video that fails at a stage dropping
out of the stages after it while the others go on. The one chain: build-tv-dataset's
stage tasks (tasks/dataset.py: one task run per stage and batch of videos),
`emotionclip stage <name>` and `run_videos` (a plain loop, no Prefect) all go
through `run_stage_over`.

Results are typed: a `StageOutcome` per video and stage (ran / cached / failed,
with the reason and whether the failure may heal by itself), a `VideoResult` per
video over the whole chain, which the video registry records
(`growth.record_results`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ContextManager, Iterable, Literal, Mapping, Optional

from emotionclip.core.catalog import Catalog
from emotionclip.core.errors import StageError
from emotionclip.stages.download import is_transient_error
from emotionclip.stages.registry import VIDEO_STAGES, run_stage, run_stage_many

Outcome = Literal["ran", "cached", "failed"]


@dataclass(frozen=True)
class StageOutcome:
    """What one stage did for one video."""

    video_id: str
    stage: str
    outcome: Outcome
    seconds: float = 0.0
    summary: dict[str, Any] = field(default_factory=dict)
    reason: str = ""  # failed: the error; ran: why an output that looked done was redone
    transient: bool = False  # failed: may heal by itself (network, memory, disk): a later run retries

    @property
    def ok(self) -> bool:
        return self.outcome != "failed"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def failed(video_id: str, stage: str, error: BaseException | str, seconds: float = 0.0) -> StageOutcome:
    """The outcome of a video that failed at `stage` with `error`."""
    transient = isinstance(error, BaseException) and is_transient_error(error)
    return StageOutcome(video_id, stage, "failed", round(seconds, 3), reason=str(error), transient=transient)


def _done(video_id: str, stage: str, summary: dict[str, Any], seconds: float) -> StageOutcome:
    return StageOutcome(video_id, stage, "cached" if summary.get("skipped") else "ran", round(seconds, 3),
                        summary=summary, reason=summary.get("rerun_reason", ""))


def run_stage_over(catalog: Catalog, stage: str, video_ids: list[str], *, force: bool = False,
                   run_slot: Optional[Callable[[], ContextManager[Any]]] = None) -> list[StageOutcome]:
    """One per-video stage over `video_ids`: each video ran, cached (up to date from
    its stage marker) or failed with its reason; never raises for one video.
    A stage with `run_many` runs the videos that need it in one call (model batches
    filled across videos; the call's time is split evenly over them); the others run
    video by video. `run_slot` is entered only around real runs (the GPU slot)."""
    if stage not in VIDEO_STAGES:
        raise ValueError(f"unknown per-video stage {stage!r}; choose from {list(VIDEO_STAGES)}")
    if VIDEO_STAGES[stage].run_many is not None:
        t0 = time.perf_counter()
        results = run_stage_many(catalog, stage, video_ids, force=force, run_slot=run_slot)
        n_ran = sum(1 for r in results.values() if not isinstance(r, BaseException) and not r.get("skipped"))
        share = (time.perf_counter() - t0) / max(n_ran, 1)
        return [failed(v, stage, r) if isinstance(r, BaseException)
                else _done(v, stage, r, 0.0 if r.get("skipped") else share) for v, r in results.items()]
    out = []
    for vid in dict.fromkeys(video_ids):
        t0 = time.perf_counter()
        try:
            summary = run_stage(catalog, stage, vid, force=force, run_slot=run_slot)
        except Exception as e:  # StageError names stage and video; keep the others going
            out.append(failed(vid, e.stage if isinstance(e, StageError) and e.stage in VIDEO_STAGES else stage, e,
                              time.perf_counter() - t0))
            continue
        out.append(_done(vid, stage, summary, time.perf_counter() - t0))
    return out


def gates(stage: str) -> tuple[str, ...]:
    """The stages whose outcomes decide which videos `stage` runs on: the stage
    before it in DAG order (whose outcomes list only the videos that passed every
    stage before), so a video that failed anywhere drops out of all later stages (no
    detection for a video whose captions are unusable). The roots (no input stage:
    words, frames) run side by side and gate the first stage after them together.
    The build flow's graph draws these edges: words/frames -> sentences -> sentiment
    -> humans -> clips."""
    order = list(VIDEO_STAGES)
    if not VIDEO_STAGES[stage].after:
        return ()
    i = order.index(stage)
    prev = order[i - 1]
    if not VIDEO_STAGES[prev].after:  # the first stage after the roots
        return tuple(s for s in order[:i] if not VIDEO_STAGES[s].after)
    return (prev,)


def passed(video_ids: Iterable[str], upstream: Iterable[Iterable[StageOutcome]]) -> list[str]:
    """The videos of `video_ids` that every upstream stage's outcomes list as ok (a
    video a stage never saw, because an earlier one failed, has not passed)."""
    ok_sets = [{o.video_id for o in outcomes if o.ok} for outcomes in upstream]
    return [v for v in dict.fromkeys(video_ids) if all(v in s for s in ok_sets)]


@dataclass
class VideoResult:
    """One video over the whole chain: each stage's outcome, in DAG order."""

    video_id: str
    outcomes: dict[str, StageOutcome] = field(default_factory=dict)

    @property
    def failure(self) -> Optional[StageOutcome]:
        """The first failed stage, in DAG order."""
        return next((o for o in self.outcomes.values() if not o.ok), None)

    @property
    def ok(self) -> bool:
        return self.failure is None and all(s in self.outcomes for s in VIDEO_STAGES)

    @property
    def stage(self) -> str:
        f = self.failure
        return f.stage if f else ""

    @property
    def error(self) -> str:
        f = self.failure
        return f.reason if f else ""

    @property
    def transient(self) -> bool:
        f = self.failure
        return bool(f and f.transient)

    def done_stages(self) -> list[str]:
        return [s for s, o in self.outcomes.items() if o.ok]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (a batch run on another machine hands its results back as JSON)."""
        return {"video_id": self.video_id, "ok": self.ok, "stage": self.stage, "error": self.error,
                "transient": self.transient, "outcomes": {s: o.to_dict() for s, o in self.outcomes.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VideoResult":
        return cls(d["video_id"], {s: StageOutcome(**o) for s, o in d.get("outcomes", {}).items()})

    def table_row(self) -> dict[str, Any]:
        """One row of a batch's outcome table: each stage's outcome (ran 1.2 s /
        cached / failed 0.3 s), and the error."""
        row: dict[str, Any] = {"video_id": self.video_id}
        for stage in VIDEO_STAGES:
            o = self.outcomes.get(stage)
            row[stage] = "" if o is None else o.outcome if o.outcome == "cached" else f"{o.outcome} {o.seconds:.1f} s"
        row["error"] = self.error
        return row


def unfinished(video_ids: list[str], stage: str, why: str) -> list[VideoResult]:
    """The results of videos whose batch never reported (a lost worker, a batch run that
    failed after its retries): failed, transient (the next run finds the stages they
    finished up to date and retries the rest)."""
    return [VideoResult(v, {stage: StageOutcome(v, stage, "failed", reason=why, transient=True)}) for v in video_ids]


def video_results(video_ids: list[str],
                  per_stage: Mapping[str, list[StageOutcome] | BaseException]) -> list[VideoResult]:
    """Gather each stage's outcomes (or the exception of a stage task that failed as a
    whole: a crashed process, a lost worker) into one result per video. A video that
    passed every input of a stage whose task failed as a whole failed there (transient:
    the next run finds what finished up to date and retries the rest)."""
    by_video = {v: VideoResult(v) for v in dict.fromkeys(video_ids)}
    for stage in VIDEO_STAGES:
        res = per_stage.get(stage)
        if res is None:
            continue
        if isinstance(res, BaseException):
            for r in by_video.values():
                if r.failure is None and all(d in r.outcomes for d in gates(stage)):
                    r.outcomes[stage] = StageOutcome(r.video_id, stage, "failed", reason=f"{type(res).__name__}: {res}",
                                                     transient=True)
            continue
        for o in res:
            if o.video_id in by_video:
                by_video[o.video_id].outcomes[stage] = o
    for r in by_video.values():  # DAG order, whatever order the stages finished in
        r.outcomes = {s: r.outcomes[s] for s in VIDEO_STAGES if s in r.outcomes}
    return list(by_video.values())


def run_videos(catalog: Catalog, video_ids: list[str], *, force: bool = False,
               run_slot: Optional[Callable[[], ContextManager[Any]]] = None) -> list[VideoResult]:
    """The whole chain over `video_ids`, in this process, stage by stage (what the
    build flow's stage tasks do, without Prefect)."""
    per_stage: dict[str, list[StageOutcome]] = {}
    for stage, spec in VIDEO_STAGES.items():
        todo = passed(video_ids, [per_stage[d] for d in gates(stage)])
        slot = run_slot if spec.uses_model else None
        per_stage[stage] = run_stage_over(catalog, stage, todo, force=force, run_slot=slot)
    return video_results(video_ids, per_stage)


def run_video(catalog: Catalog, video_id: str, *, force: bool = False) -> dict[str, dict]:
    """Every per-video stage of one video in order; {stage: summary}. Raises the
    first failure as StageError (the plain-loop form of the chain)."""
    result = run_videos(catalog, [video_id], force=force)[0]
    if result.failure is not None:
        raise StageError(result.stage, video_id, result.error)
    return {s: o.summary for s, o in result.outcomes.items()}


def split(items: list[str], size: int) -> list[list[str]]:
    """Consecutive batches of at most `size` items."""
    if size < 1:
        raise ValueError(f"videos_per_batch must be >= 1, got {size}")
    return [items[i:i + size] for i in range(0, len(items), size)]


def near_equal_parts(items: list[str], k: int) -> list[list[str]]:
    """`items` in at most k near-equal consecutive parts (none empty): a batch's
    parallel chains."""
    k = max(1, min(k, len(items)))
    q, r = divmod(len(items), k)
    out, i = [], 0
    for j in range(k):
        n = q + (1 if j < r else 0)
        out.append(items[i:i + n])
        i += n
    return out
