"""The acquisition rules of a build run, on the library's side (no Prefect: the
build-tv-dataset flow runs the search / download / import tasks and hands their
results here): which downloads a run makes (this run's candidates or URLs, plus
the transient failures of earlier runs, up to `stages.download.max_attempts`),
URL stand-ins for videos that failed before yt-dlp named them, and the registry
records of what was acquired and what failed, one registry write per phase
(docs/design.md section 3)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

from emotionclip.core.catalog import Catalog
from emotionclip.core.video_registry import VideoRegistry, url_key
from emotionclip.stages.download import LocalImport, is_transient_error
from emotionclip.stages.growth import info_record

ExclusionRule = Callable[[str, Optional[str]], Optional[str]]


@dataclass(frozen=True)
class DownloadJob:
    """One download: a YouTube id, or a URL of any site yt-dlp supports."""

    video_id: str = ""
    url: str = ""

    @property
    def key(self) -> str:
        """The registry id the job stands for until yt-dlp names the video: the id,
        or the URL's stand-in (`url_key`)."""
        return self.video_id or url_key(self.url)


@dataclass(frozen=True)
class AcquisitionFailure:
    """A video that could not be acquired (download or import)."""

    video_id: str
    stage: str
    error: str
    transient: bool = False
    url: str = ""

    def record(self) -> dict[str, Any]:
        """The row of the run's failures table and of failures.parquet."""
        return {"video_id": self.video_id, "stage": self.stage, "error": self.error}


@dataclass
class Acquired:
    """What acquisition produced: ids ready for processing, failures, how many jobs
    were earlier runs' retries, and the task runs it took."""

    video_ids: list[str] = field(default_factory=list)
    failures: list[AcquisitionFailure] = field(default_factory=list)
    retried: int = 0
    task_runs: int = 0
    # per video, the orchestrator's handle of the task run that acquired it (the flow
    # draws the graph's edges from it); opaque to the library
    upstream: dict[str, Any] = field(default_factory=dict)


def record_candidates(registry: VideoRegistry, candidates: list[dict[str, Any]], run_id: str) -> list[DownloadJob]:
    """Register the search's candidates (before downloading: a killed run still knows
    them) and return their download jobs."""
    registry.register([{"video_id": c["id"], "title": c.get("title"), "channel": c.get("channel"),
                        "url": c.get("url"), "query": c.get("query") or "", "source": "youtube"}
                       for c in candidates], run_id)
    return [DownloadJob(video_id=c["id"]) for c in candidates]


def url_jobs(registry: VideoRegistry, urls: Iterable[str], *, retry_failed: bool, max_attempts: int) -> list[DownloadJob]:
    """One job per URL of the list, except URLs whose video the registry knows as
    done, excluded or given up on (they cost no request)."""
    skip = registry.skip_ids(max_attempts, retry_failed)
    rows = registry.read()
    skip_urls = set(rows.loc[rows["video_id"].isin(skip), "url"])
    return [DownloadJob(url=u) for u in dict.fromkeys(urls) if u not in skip_urls and url_key(u) not in skip]


def plan_downloads(catalog: Catalog, registry: VideoRegistry, jobs: list[DownloadJob], *, retry_failed: bool,
                   limit: Optional[int]) -> tuple[list[DownloadJob], int]:
    """This run's download jobs: earlier runs' download failures that may heal (all of
    them with `retry_failed`) first, then `jobs`, at most `limit`. Returns the jobs and
    how many are retries."""
    max_attempts = catalog.stages.download.max_attempts
    rows = registry.read().set_index("video_id", drop=False)
    queued = {j.video_id or j.url for j in jobs}
    retries = []
    for vid in registry.retry_ids(max_attempts, retry_failed):
        row = rows.loc[vid]
        if row["failed_stage"] != "download":
            continue  # downloaded already: processing retries it (growth.videos_to_process)
        if row["source"] == "youtube" and vid not in queued:
            retries.append(DownloadJob(video_id=vid))
        elif row["source"] == "url" and row["url"] and row["url"] not in queued:
            retries.append(DownloadJob(url=row["url"]))
    planned = retries + jobs
    if limit is not None:
        planned = planned[:max(limit, 0)]
    return planned, len(retries)


def record_downloads(catalog: Catalog, registry: VideoRegistry, results: list[tuple[DownloadJob, Any]], run_id: str,
                     reason_of: ExclusionRule) -> Acquired:
    """Record each job's result (the download summary, or the exception it ended with)
    in one registry write: downloaded videos registered from their info.json (a URL
    stand-in of an earlier failure replaced by the real id), failures marked with
    whether they may heal, exclusion rules applied now that titles are known."""
    out = Acquired()
    ok: list[tuple[DownloadJob, str]] = []
    for job, result in results:
        if isinstance(result, BaseException):
            vid = getattr(result, "video_id", None) or job.key
            out.failures.append(AcquisitionFailure(vid, "download", str(result), is_transient_error(result), job.url))
            continue
        vid = (result or {}).get("video_id")
        if vid:  # None: yt-dlp skipped an archived URL before naming its video
            ok.append((job, vid))
    with registry.batch() as b:
        for job, vid in ok:
            if job.url and url_key(job.url) != vid:
                b.forget(url_key(job.url))  # the stand-in of an earlier failure: the real id is known now
            b.register([info_record(catalog, vid)], run_id)
        for f in out.failures:
            b.register([{"video_id": f.video_id, "url": f.url or None, "source": "url" if f.url else "youtube"}],
                       run_id)
            b.mark_failed(f.video_id, "download", f.error, f.transient, run_id)
        b.apply_exclusions(reason_of)
    out.video_ids = list(dict.fromkeys(vid for _, vid in ok))
    return out


def record_import(catalog: Catalog, registry: VideoRegistry, imported: LocalImport, run_id: str,
                  reason_of: ExclusionRule) -> Acquired:
    """Record a local folder's import in one registry write (a bad file stays bad:
    its failure is permanent)."""
    out = Acquired(video_ids=list(imported.video_ids),
                   failures=[AcquisitionFailure(f["video_id"], f["stage"], f["error"], False)
                             for f in imported.failures])
    with registry.batch() as b:
        b.register([info_record(catalog, v) for v in out.video_ids], run_id)
        for f in out.failures:
            b.register([{"video_id": f.video_id, "source": "local"}], run_id)
            b.mark_failed(f.video_id, f.stage, f.error, False, run_id)
        b.apply_exclusions(reason_of)
    return out
