"""The stages of build-tv-dataset, listed once. The Prefect tasks (tasks/dataset.py),
the per-video chain (`emotionclip.stages.chain`) and the `emotionclip stage <name>`
commands are all made from `STAGES`, so a stage's name, function and help text
live here only.

Per-video stages run through `run_stage`, which skips what is up to date. A
stage's *key* hashes its parameters and model (`Catalog.stage_fingerprint`), its
output location, and the keys of the stages it reads from; the root of the chain
is the video's downloaded `info.json`. A stage is up to date when the marker it
wrote after finishing (`.stages/<stage>.json` in the video folder) holds the same
key and every output still has the size and integrity checksum the marker
recorded (`io.fingerprint_output`: a zip's central directory, a Parquet footer),
so a truncated or overwritten output re-runs its stage instead of being trusted.
So a changed parameter re-runs only the stages downstream of it, and a killed run
(no marker) re-runs the stage; the temporary files it left are removed when the
stage next runs. The markers are the only cache: the Prefect tasks report an
up-to-date stage as Cached from them.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Iterator, NamedTuple

from emotionclip.core import io
from emotionclip.core.catalog import Catalog
from emotionclip.core.errors import StageError
from emotionclip.core.ids import validate_video_id
from emotionclip.stages import card, clips, download, frames, humans, manifests, search, sentences, sentiment, words

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """One stage. Per-video stages (`per_video`) are `run(catalog, video_id) -> summary`
    and write `outputs` (catalog artifact names) after reading the outputs of `after`;
    the dataset-level ones (search, download, manifests, card) have their own
    signatures and are called by the flow's acquire and finish steps."""

    name: str
    run: Callable[..., Any]
    help: str
    per_video: bool = False
    outputs: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    uses_model: bool = False  # GPU-capable: a run takes a slot of the global `gpu` limit
    network: bool = False  # talks to YouTube: Prefect retries transient errors, global rate limit
    # Optional: the stage over many videos at once, `(catalog, video_ids) -> {video_id:
    # summary | exception}`, writing each video's outputs as `run` would; model batches
    # fill across videos (a video with 5 sentences no longer runs a batch of 5).
    run_many: Callable[..., dict[str, Any]] | None = None


# The DAG's topological order.
STAGES: dict[str, Stage] = {s.name: s for s in [
    Stage("search", search.run_search,
          "Search YouTube for TV series with English captions, >= 40 min; write the candidates table.",
          network=True),
    Stage("download", download.run_download,
          "Download one video with English captions (manual first, automatic as fallback), or import a folder.",
          network=True),
    Stage("words", words.run_words, "Captions -> timed words (json3, rolling automatic VTT, VTT, SRT).",
          per_video=True, outputs=("words",)),
    Stage("frames", frames.run_frames, "Video -> 8 FPS frames, smaller edge 256, one random-access file.",
          per_video=True, outputs=("frames",)),
    Stage("sentences", sentences.run_sentences, "Words -> punctuated sentences (FullStop).",
          per_video=True, outputs=("sentences",), after=("words",), uses_model=True,
          run_many=sentences.run_sentences_many),
    Stage("sentiment", sentiment.run_sentiment, "Sentences -> 7 emotion logits and probabilities (DistilRoBERTa).",
          per_video=True, outputs=("sentiment",), after=("sentences",), uses_model=True,
          run_many=sentiment.run_sentiment_many),
    # Detection decodes the same 8 FPS frames the store holds, so it follows the frame parameters.
    Stage("humans", humans.run_humans, "Frames -> person boxes (YOLO, imgsz 640, conf 0.25, IoU 0.45).",
          per_video=True, outputs=("humans",), after=("frames",), uses_model=True),
    Stage("clips", clips.run_clips, "Sentences + scores + boxes -> one clip per sentence.",
          per_video=True, outputs=("clips",), after=("sentences", "sentiment", "humans", "frames")),
    Stage("manifests", manifests.build_manifests,
          "Filter every video's clips (stages.filter) and write the Parquet manifests, rejected and failures."),
    Stage("card", card.write_card_from_disk, "Write the dataset card (Markdown + plots) from the manifests on disk."),
]}
VIDEO_STAGES: dict[str, Stage] = {name: s for name, s in STAGES.items() if s.per_video}


def _sha(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _source_key(catalog: Catalog, video_id: str) -> str:
    """Identity of the downloaded inputs: the content of info.json."""
    info = catalog.artifact("info", video_id)
    if not io.exists(info):
        raise StageError("download", video_id, f"not downloaded yet: {info} is missing")
    with io.open_file(info, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:20]


def stage_key(catalog: Catalog, stage: str, video_id: str, _memo: dict | None = None) -> str:
    """The cache key of `stage` for `video_id` (see module docstring)."""
    memo = {} if _memo is None else _memo
    if stage in memo:
        return memo[stage]
    spec = VIDEO_STAGES[stage]
    upstream = [stage_key(catalog, dep, video_id, memo) for dep in spec.after]
    key = _sha({
        "stage": stage,
        "params": catalog.stage_fingerprint(stage),
        "outputs": [catalog.artifact(o, video_id) for o in spec.outputs],
        "source": _source_key(catalog, video_id),
        "upstream": upstream,
    })
    memo[stage] = key
    return key


def _marker(catalog: Catalog, stage: str, video_id: str) -> str:
    return f"{catalog.artifact('video_dir', video_id)}/.stages/{stage}.json"


def read_marker(catalog: Catalog, stage: str, video_id: str) -> dict | None:
    path = _marker(catalog, stage, video_id)
    if not io.exists(path):
        return None
    try:
        return io.read_json(path)
    except (ValueError, OSError):
        return None


def _output_name(catalog: Catalog, output: str, video_id: str) -> str:
    return catalog.artifact(output, video_id).rstrip("/").rsplit("/", 1)[-1]


def _fingerprints(catalog: Catalog, stage: str, video_id: str) -> dict[str, dict]:
    """Each output's `io.fingerprint_output`, by artifact name (what the marker records)."""
    return {o: io.fingerprint_output(catalog.artifact(o, video_id)) for o in VIDEO_STAGES[stage].outputs}


class _Check(NamedTuple):
    reason: str | None = None  # why the stage is not up to date; None when it is
    changed: bool = False  # an output no longer matches its marker (worth a warning)
    fingerprints: dict[str, dict] | None = None  # taken now for a marker that predates them


def _check(catalog: Catalog, stage: str, video_id: str) -> _Check:
    spec = VIDEO_STAGES[stage]
    marker = read_marker(catalog, stage, video_id)
    if marker is None:
        return _Check("no marker")
    if marker.get("key") != stage_key(catalog, stage, video_id):
        return _Check("parameters or inputs changed")
    for o in spec.outputs:
        if not io.exists(catalog.artifact(o, video_id)):
            return _Check(f"{_output_name(catalog, o, video_id)} of {video_id} is missing")
    recorded = marker.get("outputs")
    if recorded is None:
        # A marker from before output fingerprints: honoured (existing data roots are
        # not rebuilt) and completed with fingerprints taken now, so an output whose
        # integrity region cannot even be read is still caught.
        try:
            return _Check(fingerprints=_fingerprints(catalog, stage, video_id))
        except (OSError, ValueError) as e:
            return _Check(f"an output of {video_id} is unreadable ({e})", changed=True)
    for o in spec.outputs:
        expected = recorded.get(o)
        why = "not in its marker" if expected is None else io.check_output(catalog.artifact(o, video_id), expected)
        if why is not None:
            return _Check(f"{_output_name(catalog, o, video_id)} of {video_id} changed since its marker ({why})",
                          changed=True)
    return _Check()


def is_up_to_date(catalog: Catalog, stage: str, video_id: str) -> bool:
    """The marker holds the current key and every output still matches the size and
    integrity checksum the marker recorded (a few tail reads per output)."""
    return _check(catalog, stage, video_id).reason is None


_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


@contextlib.contextmanager
def _stage_lock(catalog: Catalog, video_id: str, stage: str) -> Iterator[None]:
    """One runner per (video, stage) at a time: a thread lock within the process and,
    on a local data root, a file lock across processes, so two concurrent runs of
    the deployment never write the same file (the second finds it up to date). The
    OS releases a file lock when its process dies, so a killed run blocks nothing."""
    path = _marker(catalog, stage, video_id)[: -len(".json")] + ".lock"
    with _locks_guard:
        tlock = _locks.setdefault(path, threading.Lock())
    with tlock:
        if io.is_local(path):
            from filelock import FileLock

            io.makedirs(path.rsplit("/", 1)[0])
            with FileLock(path):
                yield
        else:
            yield


def _remove_stale_temps(catalog: Catalog, stage: str, video_id: str) -> list[str]:
    """Temporary files a killed run of `stage` left (its outputs' and its marker's).
    Called under the stage lock only: no live writer of these names exists then."""
    paths = [catalog.artifact(o, video_id) for o in VIDEO_STAGES[stage].outputs] + [_marker(catalog, stage, video_id)]
    return [t for p in paths for t in io.remove_stale_temps(p)]


def write_marker(catalog: Catalog, stage: str, video_id: str, summary: dict, *, key: str | None = None,
                 outputs: dict[str, dict] | None = None) -> dict:
    """Record that `stage` finished for `video_id`: its key and each output's
    fingerprint (both taken now unless given: `run_stage` takes the key before
    running). The one writer of stage markers. Raises OSError/ValueError on an
    unreadable output."""
    marker = {
        "stage": stage,
        "key": key if key is not None else stage_key(catalog, stage, video_id),
        "summary": summary,
        # size + integrity checksum of each output, checked before a skip
        "outputs": outputs if outputs is not None else _fingerprints(catalog, stage, video_id),
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(),
    }
    io.atomic_write_json(_marker(catalog, stage, video_id), marker)
    return marker


class _Ready(NamedTuple):
    cached: dict | None = None  # the marker's summary when the stage is up to date
    key: str = ""  # the key to record once the stage has run
    rerun_reason: str | None = None  # an output no longer matched its marker


def _prepare(catalog: Catalog, stage: str, video_id: str, force: bool) -> _Ready:
    """Under the (video, stage) lock: what a run of `stage` needs to do. Raises
    StageError when an input stage is not up to date."""
    for tmp in _remove_stale_temps(catalog, stage, video_id):
        log.info("removed %s, left by an interrupted %s run", tmp, stage)
    reason = None
    if not force:
        check = _check(catalog, stage, video_id)
        if check.reason is None:
            marker = read_marker(catalog, stage, video_id) or {}
            if check.fingerprints is not None:  # complete an old marker (we hold its lock)
                io.atomic_write_json(_marker(catalog, stage, video_id), {**marker, "outputs": check.fingerprints})
            return _Ready(cached={**marker.get("summary", {}), "skipped": True})
        if check.changed:
            reason = check.reason
            log.warning("%s: re-running %s", reason, stage)
    inputs = {d: _check(catalog, d, video_id).reason for d in VIDEO_STAGES[stage].after}
    missing = [d for d, why in inputs.items() if why is not None]
    if missing:
        raise StageError(stage, video_id, f"inputs not ready: run {', '.join(missing)} first "
                                          f"({'; '.join(f'{d}: {inputs[d]}' for d in missing)})")
    return _Ready(key=stage_key(catalog, stage, video_id), rerun_reason=reason)


def _as_stage_error(stage: str, video_id: str, e: BaseException) -> StageError:
    """Any failure, naming the video and the stage (the original kept as its cause)."""
    if isinstance(e, StageError):
        return e
    err = StageError(stage, video_id, f"{type(e).__name__}: {e}")
    err.__cause__ = e
    return err


def _finish(catalog: Catalog, stage: str, video_id: str, summary: dict, ready: _Ready) -> dict:
    """Fingerprint the outputs and write the marker of a stage that has run."""
    try:
        outputs = _fingerprints(catalog, stage, video_id)
    except (OSError, ValueError) as e:  # never write a marker that vouches for a broken output
        raise StageError(stage, video_id, f"wrote an unreadable output: {e}") from e
    write_marker(catalog, stage, video_id, summary, key=ready.key, outputs=outputs)
    result = {**summary, "skipped": False}
    if ready.rerun_reason is not None:
        result["rerun_reason"] = ready.rerun_reason
    return result


def run_stage(catalog: Catalog, stage: str, video_id: str, *, force: bool = False,
              run_slot: Callable[[], ContextManager[Any]] | None = None) -> dict:
    """Run one per-video stage unless it is up to date. Returns the stage's summary
    with `skipped` set, and `rerun_reason` when an output no longer matched its
    marker. Any failure is raised as StageError naming stage and video.
    `run_slot`: a context manager entered around the stage's run only, never around
    the up-to-date check (the flow's GPU concurrency slot: a cached stage takes none)."""
    if stage not in VIDEO_STAGES:
        raise StageError(stage, video_id, f"unknown stage; choose from {list(VIDEO_STAGES)}")
    video_id = validate_video_id(video_id)
    with _stage_lock(catalog, video_id, stage):
        ready = _prepare(catalog, stage, video_id, force)
        if ready.cached is not None:
            return ready.cached
        try:
            with run_slot() if run_slot is not None else contextlib.nullcontext():
                summary = VIDEO_STAGES[stage].run(catalog, video_id) or {}
        except StageError:
            raise
        except Exception as e:  # anything else still names the video and the stage
            raise _as_stage_error(stage, video_id, e) from e
        return _finish(catalog, stage, video_id, summary, ready)


def run_stage_many(catalog: Catalog, stage: str, video_ids: list[str], *, force: bool = False,
                   run_slot: Callable[[], ContextManager[Any]] | None = None) -> dict[str, dict | StageError]:
    """`run_stage` over many videos with the stage's `run_many`: one call (one slot,
    model batches filled across videos) for every video not up to date. Returns per
    video its summary (as `run_stage`) or its StageError; one video's failure never
    fails the others. The (video, stage) locks are taken in sorted order, so two
    runs over overlapping videos cannot deadlock."""
    spec = VIDEO_STAGES[stage]
    if spec.run_many is None:
        raise ValueError(f"stage {stage!r} has no run_many")
    out: dict[str, dict | StageError] = {}
    with contextlib.ExitStack() as locks:
        todo: dict[str, _Ready] = {}
        for vid in sorted(set(video_ids)):
            try:
                validate_video_id(vid)
                locks.enter_context(_stage_lock(catalog, vid, stage))
                ready = _prepare(catalog, stage, vid, force)
            except Exception as e:
                out[vid] = _as_stage_error(stage, vid, e)
                continue
            if ready.cached is not None:
                out[vid] = ready.cached
            else:
                todo[vid] = ready
        if todo:
            try:
                with run_slot() if run_slot is not None else contextlib.nullcontext():
                    results = spec.run_many(catalog, list(todo)) or {}
            except Exception as e:  # the call itself failed (the model did not load): all of its videos
                results = {vid: e for vid in todo}
            for vid, ready in todo.items():
                r = results.get(vid)
                if r is None:
                    r = StageError(stage, vid, "run_many returned no result for this video")
                try:
                    if isinstance(r, BaseException):
                        raise _as_stage_error(stage, vid, r)
                    out[vid] = _finish(catalog, stage, vid, r, ready)
                except StageError as e:
                    out[vid] = e
    return {vid: out[vid] for vid in dict.fromkeys(video_ids)}


def list_video_ids(catalog: Catalog) -> list[str]:
    """Ids of the videos present under the data root (those with an info.json)."""
    import fsspec

    videos_dir = catalog.artifact("video_dir", "x").rsplit("/", 1)[0]
    if not io.exists(videos_dir):
        return []
    fs, path = fsspec.core.url_to_fs(videos_dir)
    ids = []
    for entry in sorted(fs.ls(path, detail=False)):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        try:
            validate_video_id(name)
        except ValueError:
            continue
        if io.exists(catalog.artifact("info", name)):
            ids.append(name)
    return ids


def done_video_ids(catalog: Catalog) -> list[str]:
    """Videos whose clips stage is up to date under this catalog: the full set the
    manifests are built from (never a hand-picked subset, which would silently
    replace the dataset with part of it)."""
    return [vid for vid in list_video_ids(catalog) if is_up_to_date(catalog, "clips", vid)]
