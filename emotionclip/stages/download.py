"""Download stage: one video plus its English captions into `raw_dir`, and `info.json`.

Sources (docs/design.md section 4, contract):
- a YouTube id: the URL is built from the validated id;
- a plain URL of any site yt-dlp supports: the video id is the sanitized
  extractor id;
- a local folder of videos with caption files (`import_local_folder`).

yt-dlp is driven through its Python API with an options dict (never a shell
string). A video is fetched in two steps with the same extracted metadata:
1. extract (no download) and choose the caption track ourselves: manual
   English first, automatic (`en`, `en-orig`) as the fallback. A video with no
   English track fails here, before any media is fetched (the words stage
   needs captions).
2. download the chosen format and exactly that caption track into a staging
   folder next to `raw_dir`, check the files, rename the folder into place,
   write `info.json`, then record the video in the download archive. On a data
   root on an object store (an fsspec URL) the staging folder is local (TMPDIR)
   and its files are uploaded one put each, `info.json` last.

The archive is yt-dlp's own (same file format, same ids, read by yt-dlp's
`download_archive` option so it skips recorded videos, a YouTube id without a
single request). We append the line ourselves *after* the rename: yt-dlp would
append it before our rename, and a run killed in between would then skip a
video whose files were never put in place.

Retries: inside one call only yt-dlp's own (`retries` for HTTP, fragments and
extractors, backoff from the catalog's sleep options). What yt-dlp does not
retry (a throttled page, a 429 on the media) surfaces as a `DownloadError`
whose `transient` flag `is_transient_error` reads; the caller (the Prefect
task) decides whether to try again. Request budgets are Prefect global
concurrency limits, applied by the task, not here.
"""

from __future__ import annotations

import functools
import http.client
import logging
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from emotionclip.core.catalog import Catalog, DownloadParams
from emotionclip.core.errors import StageError
from emotionclip.core.ffmpeg import VideoProbeError, ffmpeg_exe, probe_video
from emotionclip.core.ids import InvalidVideoId, sanitize_video_id, validate_video_id
from emotionclip.core import io as fio
from emotionclip.core.io import atomic_write_json, is_local, read_json
from emotionclip.core.progress import Tracker, track

log = logging.getLogger(__name__)

STAGE = "download"
VIDEO_EXTS = (".mp4", ".mkv", ".webm", ".mov")
CAPTION_EXTS = ("json3", "vtt", "srt")  # what the words stage reads
YOUTUBE_WATCH = "https://www.youtube.com/watch?v={}"
# Codecs every ffmpeg build decodes fast; ties on size prefer them.
_CODEC_RANK = {"avc1": 0, "h264": 0, "vp9": 1, "vp09": 1, "vp8": 2, "av01": 3}
# yt-dlp needs a JavaScript runtime for YouTube (its signature and "n" challenges
# run as JS). The `deno` package (a dependency) ships one; see `find_js_runtime`.
JS_RUNTIME_ENV = "EMOTIONCLIP_JS_RUNTIME"
_YOUTUBE_HOSTS = re.compile(r"^(?:[a-z0-9-]+\.)*(?:youtube\.com|youtu\.be|youtube-nocookie\.com)$")
# Transient HTTP answers worth another attempt (throttling, server trouble).
_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}


# -- pure choices (unit-tested without a network) --------------------------------
def _short_edge(f: dict[str, Any]) -> int | None:
    w, h = f.get("width"), f.get("height")
    if w and h:
        return int(min(w, h))
    return None


def _has_video(f: dict[str, Any]) -> bool:
    # vcodec None means "unknown" (generic extractor): it may well be video.
    return f.get("vcodec") != "none" and f.get("ext") not in ("mhtml",) and not f.get("has_drm")


def _size_estimate(f: dict[str, Any]) -> float:
    return float(f.get("filesize") or f.get("filesize_approx") or (f.get("tbr") or 0) * 1000 or 0)


def select_format(formats: Iterable[dict[str, Any]], min_height: int) -> dict[str, Any] | None:
    """The smallest video format whose smaller edge is >= `min_height`.

    "Smaller edge", not height: a portrait video's width is its small edge.
    Video-only formats are fine (captions carry the words). Fallbacks: when no
    format is big enough, the biggest one (the frames stage scales up); when
    no format states its size (generic pages, a single direct file), the
    best-ranked one (yt-dlp lists formats worst to best)."""
    videos = [f for f in formats if _has_video(f)]
    if not videos:
        return None
    sized = [f for f in videos if _short_edge(f) is not None]
    big = [f for f in sized if _short_edge(f) >= min_height]
    if big:
        def key(f: dict[str, Any]) -> tuple:
            codec = str(f.get("vcodec") or "").split(".")[0]
            direct = 0 if str(f.get("protocol") or "https").startswith("http") else 1
            return (_short_edge(f), direct, _CODEC_RANK.get(codec, 4), _size_estimate(f))

        return min(big, key=key)
    if sized:
        return max(sized, key=lambda f: (_short_edge(f), -_size_estimate(f)))
    return videos[-1]


@dataclass(frozen=True)
class CaptionChoice:
    lang: str
    kind: str  # "manual" | "automatic"
    ext: str


def _track_ext(entry: dict[str, Any]) -> str:
    ext = entry.get("ext")
    if not ext:
        path = str(entry.get("url") or "").split("?")[0]
        ext = path.rsplit(".", 1)[-1] if "." in path.rsplit("/", 1)[-1] else ""
    return str(ext).lower()


def choose_captions(
    subtitles: dict[str, list[dict[str, Any]]] | None,
    automatic: dict[str, list[dict[str, Any]]] | None,
    langs: list[str],
    formats: list[str],
) -> CaptionChoice | None:
    """Manual captions first (the listed languages, then any regional variant
    such as `en-GB`), automatic captions of exactly the listed languages as the
    fallback (`en-orig` is YouTube's untranslated ASR track). Within a track
    the first of `formats` that is offered."""
    allowed = [f for f in formats if f in CAPTION_EXTS] or list(CAPTION_EXTS)

    def pick(tracks: dict[str, list[dict[str, Any]]], lang: str) -> str | None:
        offered = {_track_ext(e) for e in tracks.get(lang) or []}
        return next((f for f in allowed if f in offered), None)

    manual = {k: v for k, v in (subtitles or {}).items() if k and k != "live_chat"}
    bases = {lang.split("-")[0] for lang in langs}
    manual_order = [lang for lang in langs if lang in manual]
    manual_order += sorted(k for k in manual if k not in manual_order and k.split("-")[0] in bases)
    for lang in manual_order:
        ext = pick(manual, lang)
        if ext:
            return CaptionChoice(lang, "manual", ext)
    auto = automatic or {}
    for lang in langs:
        ext = pick(auto, lang)
        if ext:
            return CaptionChoice(lang, "automatic", ext)
    return None


def youtube_url(video_id: str) -> str:
    """Watch URL of a YouTube id (validated first, so it cannot smuggle a path or query)."""
    return YOUTUBE_WATCH.format(validate_video_id(video_id))


# -- the JavaScript runtime yt-dlp needs for YouTube ----------------------------------
@dataclass(frozen=True)
class JsRuntime:
    name: str  # yt-dlp's runtime key: deno, node, bun or quickjs
    path: str


class JsRuntimeMissing(StageError):
    """A YouTube download with no JavaScript runtime for yt-dlp to run YouTube's challenges."""


def _runtime_name(path: str) -> str:
    base = os.path.basename(path).lower()
    for key, name in (("node", "node"), ("bun", "bun"), ("qjs", "quickjs"), ("quickjs", "quickjs")):
        if base.startswith(key):
            return name
    return "deno"


@functools.lru_cache(maxsize=8)
def _runs(path: str) -> bool:
    """`path --version` exits 0 (cached: the binary does not change within a process)."""
    try:
        return subprocess.run([path, "--version"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _packaged_deno() -> str | None:
    try:
        import deno
    except ImportError:
        return None
    try:
        return deno.find_deno_bin()
    except (FileNotFoundError, OSError):
        return None


def find_js_runtime() -> JsRuntime | None:
    """The JavaScript runtime yt-dlp gets, or None. `EMOTIONCLIP_JS_RUNTIME` decides
    when set: `none` (no runtime) or a binary (a path or a name on PATH; the runtime
    kind is read from its name). Otherwise the `deno` package's binary, then deno or
    node on PATH. A runtime counts only when `<binary> --version` runs."""
    override = os.environ.get(JS_RUNTIME_ENV, "").strip()
    if override:
        if override.lower() == "none":
            return None
        path = shutil.which(override)
        return JsRuntime(_runtime_name(path), path) if path and _runs(path) else None
    for name, path in (("deno", _packaged_deno()), ("deno", shutil.which("deno")), ("node", shutil.which("node"))):
        if path and _runs(path):
            return JsRuntime(name, path)
    return None


def js_runtime_options() -> dict[str, dict[str, str]]:
    """yt-dlp's `js_runtimes` option: the found runtime with its path ({} when none;
    yt-dlp would otherwise look for deno on PATH only, missing the package's binary)."""
    rt = find_js_runtime()
    return {rt.name: {"path": rt.path}} if rt is not None else {}


def require_js_runtime(video_id: str | None = None) -> JsRuntime:
    """The runtime for a YouTube download, or JsRuntimeMissing (raised before any request)."""
    rt = find_js_runtime()
    if rt is not None:
        return rt
    override = os.environ.get(JS_RUNTIME_ENV, "").strip()
    why = (f"{JS_RUNTIME_ENV}={override!r} turns it off" if override.lower() == "none"
           else f"{JS_RUNTIME_ENV}={override!r} is not a runnable binary" if override
           else "none was found (the deno package's binary, deno or node on PATH)")
    raise JsRuntimeMissing(STAGE, video_id, f"YouTube downloads need a JavaScript runtime for yt-dlp and {why}; "
                                            f"install it with `pip install deno` or set {JS_RUNTIME_ENV} "
                                            "to a deno or node binary")


def is_youtube_url(url: str) -> bool:
    from urllib.parse import urlsplit

    return bool(_YOUTUBE_HOSTS.match((urlsplit(url).hostname or "").lower()))


def backoff_s(attempt: int, params: DownloadParams) -> float:
    """Exponential backoff: sleep_interval_s * 2**attempt, capped at max_sleep_interval_s."""
    return float(min(params.max_sleep_interval_s, params.sleep_interval_s * (2 ** attempt)))


# -- yt-dlp plumbing ---------------------------------------------------------------
class _YdlLogger:
    """Routes yt-dlp's messages to logging and keeps the last errors for our message."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def debug(self, msg: str) -> None:
        log.debug(msg)

    def info(self, msg: str) -> None:
        log.debug(msg)

    def warning(self, msg: str) -> None:
        log.warning(msg)

    def error(self, msg: str) -> None:
        self.errors.append(msg)
        log.debug(msg)


def _format_selector(min_height: int):
    def selector(ctx: dict[str, Any]):
        chosen = select_format(ctx["formats"], min_height)
        if chosen is not None:
            yield chosen

    return selector


def ydl_options(
    params: DownloadParams,
    *,
    archive: set[str],
    logger: _YdlLogger,
    outdir: Path | None = None,
    video_id: str | None = None,
    caption: CaptionChoice | None = None,
    cachedir: str | None = None,
) -> dict[str, Any]:
    """The yt-dlp options for one video (metadata only when `outdir` is None)."""
    retry_sleep = lambda n: backoff_s(n, params)  # noqa: E731 (yt-dlp wants a callable)
    opts: dict[str, Any] = {
        "format": _format_selector(params.min_height),
        "noplaylist": True,
        "quiet": True,
        "noprogress": True,
        "logger": logger,
        "retries": params.retries,
        "fragment_retries": params.retries,
        "extractor_retries": params.retries,
        "retry_sleep_functions": {"http": retry_sleep, "fragment": retry_sleep, "extractor": retry_sleep},
        "sleep_interval_requests": params.sleep_requests_s,
        "sleep_interval": params.sleep_interval_s,
        "max_sleep_interval": max(params.max_sleep_interval_s, params.sleep_interval_s),
        "sleep_interval_subtitles": params.sleep_requests_s,
        "socket_timeout": 30,
        "download_archive": archive,  # a set: yt-dlp reads it, we persist it (module doc)
        "ffmpeg_location": ffmpeg_exe(),
        "js_runtimes": js_runtime_options(),
        "cachedir": cachedir if cachedir is not None else False,
        "overwrites": True,
        "continuedl": False,
    }
    if outdir is None:
        opts["skip_download"] = True
        return opts
    assert video_id is not None and caption is not None
    # Files are named by the validated id, never by a title.
    opts["outtmpl"] = {"default": str(outdir / f"{video_id}.%(ext)s")}
    opts["writesubtitles"] = caption.kind == "manual"
    opts["writeautomaticsub"] = caption.kind == "automatic"
    opts["subtitleslangs"] = [caption.lang]
    opts["subtitlesformat"] = caption.ext
    return opts


class DownloadError(StageError):
    """A download that yt-dlp or the network failed.

    `transient`: a later try may succeed (see `is_transient_error`): set for
    what yt-dlp does not retry itself (a throttled or failing page, a 429,
    a dropped connection while extracting), so the caller (the Prefect task)
    retries it; `http_status`: the HTTP status behind it, when yt-dlp kept the
    HTTP error (it does not for the ones it gave up on after its own retries)."""

    def __init__(self, video_id: str | None, message: str, *, transient: bool,
                 http_status: int | None = None):
        super().__init__(STAGE, video_id, message)
        self.transient = transient
        self.http_status = http_status

    def __reduce__(self):  # picklable (task results cross processes): args are not the init's
        return (_rebuild_download_error, (self.video_id, self.message, self.transient, self.http_status))


def _rebuild_download_error(video_id: str | None, message: str, transient: bool,
                            http_status: int | None) -> DownloadError:
    return DownloadError(video_id, message, transient=transient, http_status=http_status)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and what it wraps: yt-dlp keeps the original in `cause` / `exc_info`,
    Python in `__cause__` / `__context__` (unless `raise ... from None` hid it)."""
    seen: set[int] = set()
    todo: list[Any] = [exc]
    while todo:
        cur = todo.pop(0)
        if not isinstance(cur, BaseException) or id(cur) in seen:
            continue
        seen.add(id(cur))
        yield cur
        exc_info = getattr(cur, "exc_info", None)
        todo += [getattr(cur, "cause", None), exc_info[1] if isinstance(exc_info, tuple) and len(exc_info) > 1
                 else None, cur.__cause__, None if cur.__suppress_context__ else cur.__context__]


def _http_status(exc: BaseException) -> int | None:
    """The HTTP status of the first HTTP error in `exc`'s chain (yt-dlp's and
    urllib's `status`, httpx's `response.status_code`)."""
    for cur in _causes(exc):
        response = getattr(cur, "response", None)
        for status in (getattr(cur, "status", None), getattr(response, "status", None),
                       getattr(response, "status_code", None)):
            if isinstance(status, int) and 100 <= status <= 599:
                return status
    return None


def _network_trouble(exc: BaseException) -> bool:
    """A timeout or a dropped/refused connection anywhere in `exc`'s chain (not a
    certificate failure or an unsupported URL: those do not heal by themselves)."""
    import httpx
    from yt_dlp.networking.exceptions import CertificateVerifyError, TransportError

    chain = list(_causes(exc))
    if any(isinstance(c, CertificateVerifyError) for c in chain):
        return False
    return any(isinstance(c, (TransportError, TimeoutError, ConnectionError, http.client.IncompleteRead,
                              httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError))
               for c in chain)


def is_transient_error(exc: BaseException) -> bool:
    """Whether a failed stage may succeed if tried again later: throttling (429),
    server trouble (5xx, 408, 425), timeouts, reset or refused connections, memory
    or disk running out, anywhere in the exception's chain. Not a 404 or other 4xx, a
    bad id, missing captions, a playlist URL; nor a 5xx or timeout that yt-dlp
    already retried until it gave up (its retries are spent, and it reports
    that as text, with no exception behind it). The one classifier of
    transient errors: the network tasks' retry condition and every per-video
    failure the registry records (retried by a later run); a `DownloadError`
    carries its verdict in `transient`."""
    if isinstance(exc, DownloadError):
        return exc.transient
    if _resources_ran_out(exc):
        return True
    status = _http_status(exc)
    if status is not None:
        return status in _TRANSIENT_STATUS
    return _network_trouble(exc)


def _resources_ran_out(exc: BaseException) -> bool:
    """Memory or disk running out anywhere in `exc`'s chain (any stage: a GPU out of
    memory, a full disk): the machine's state, not the input's, so a later try may pass."""
    import errno

    for cur in _causes(exc):
        if isinstance(cur, MemoryError) or type(cur).__name__ == "OutOfMemoryError":
            return True
        if isinstance(cur, OSError) and cur.errno in (errno.ENOSPC, errno.ENOMEM, errno.EDQUOT):
            return True
    return False


def _download_error(video_id: str | None, exc: BaseException) -> DownloadError:
    """yt-dlp's exception as ours, the verdict taken once, while its chain is at hand."""
    return DownloadError(video_id, _clean_message(exc), transient=is_transient_error(exc),
                         http_status=_http_status(exc))


def _clean_message(exc: BaseException) -> str:
    msg = str(exc).replace("\x1b[0;31mERROR:\x1b[0m ", "").strip()
    return msg.removeprefix("ERROR: ")


# -- archive -------------------------------------------------------------------------
def _archive_path(catalog: Catalog) -> str:
    return catalog.artifact("download_archive")


def load_archive(catalog: Catalog) -> set[str]:
    """The download archive's lines (`<extractor> <id>`, yt-dlp's format)."""
    path = _archive_path(catalog)
    if not fio.exists(path):
        return set()
    with fio.open_file(path, "rb") as f:
        text = f.read().decode("utf-8")
    return {line.strip() for line in text.splitlines() if line.strip()}


def _record_archive(catalog: Catalog, archive_id: str) -> None:
    from yt_dlp.utils import locked_file

    path = _archive_path(catalog)
    archive = load_archive(catalog)
    if archive_id in archive:
        return
    if not is_local(path):
        # An object has no append and no lock: rewrite it whole. Two workers recording at
        # once may lose a line; that costs a metadata request later (info.json, written
        # before, still says the video is done), never a wrong skip.
        fio.atomic_write_text(path, "".join(f"{a}\n" for a in sorted(archive | {archive_id})))
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with locked_file(path, "a", encoding="utf-8") as f:  # yt-dlp's lock: safe with its CLI
        f.write(archive_id + "\n")


def _archive_id(info: dict[str, Any]) -> str:
    key = info.get("extractor_key") or info.get("ie_key") or "generic"
    return f"{str(key).lower()} {info['id']}"


# -- the stage -------------------------------------------------------------------------
def _staging(catalog: Catalog, video_id: str) -> tuple[Path, Path | None, bool]:
    """A fresh staging folder for `video_id`'s raw files: (staging, video_dir,
    created). On a local root it sits next to raw_dir (same disk: one rename
    installs it; `video_dir` is the video's folder and `created` whether we made it).
    On a remote root (an fsspec URL) yt-dlp and ffmpeg still need local files: the
    staging folder is in the local temporary folder (TMPDIR) and `_install` uploads
    it; `video_dir` is None."""
    raw_dir = catalog.artifact("raw_dir", video_id)
    if not is_local(raw_dir):
        return Path(tempfile.mkdtemp(prefix=f"emotionclip-raw-{video_id}-")), None, False
    video_dir = Path(raw_dir).parent
    created = not video_dir.exists()
    video_dir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".raw.tmp-", dir=video_dir)), video_dir, created


def _finished(catalog: Catalog, video_id: str) -> dict[str, Any] | None:
    """info.json of a finished download whose video file is in place, else None."""
    info_path = catalog.artifact("info", video_id)
    if not fio.exists(info_path):
        return None
    try:
        info = read_json(info_path)
    except (OSError, ValueError):
        return None
    video_file = info.get("video_file")
    if video_file and video_file == os.path.basename(video_file) \
            and fio.exists(f"{catalog.artifact('raw_dir', video_id)}/{video_file}"):
        return info
    return None


def _cleanup(staging: Path | None, video_dir: Path | None, created: bool) -> None:
    if staging is not None:
        shutil.rmtree(staging, ignore_errors=True)
    if created and video_dir is not None and video_dir.exists() and not any(video_dir.iterdir()):
        video_dir.rmdir()


def _install(catalog: Catalog, video_id: str, staging: Path, info_json: dict[str, Any]) -> None:
    """Swap the staging folder into raw_dir and write info.json (the 'done' marker) last."""
    raw_dir = catalog.artifact("raw_dir", video_id)
    info_path = catalog.artifact("info", video_id)
    fio.remove(info_path)  # never leave an old marker next to new files
    if not is_local(raw_dir):
        # No folder rename on an object store: one put per file, then the marker.
        # A run killed in between leaves files without info.json: not done, redone.
        fio.remove(raw_dir, recursive=True)
        fio.upload_folder(staging, raw_dir)
        shutil.rmtree(staging, ignore_errors=True)
    else:
        if Path(raw_dir).exists():
            shutil.rmtree(raw_dir)
        os.replace(staging, raw_dir)
    atomic_write_json(info_path, info_json)


def _skipped(video_id: str | None, source: str, reason: str) -> dict[str, Any]:
    return {"video_id": video_id, "status": "skipped", "reason": reason, "source": source}


def run_download(
    catalog: Catalog,
    video_id: str | None = None,
    url: str | None = None,
    *,
    force: bool = False,
) -> dict[str, Any]:
    """Download one video (a YouTube `video_id`, or any `url` yt-dlp supports) with
    its English captions into `raw_dir`, write `info.json`, record the archive.

    Returns a summary: {"video_id", "status": "downloaded"|"skipped", "source",
    "caption_kind", "caption_lang", "video_file", "bytes"}. One try: the only
    retries inside are yt-dlp's own (`retries`, `fragment_retries`,
    `extractor_retries` with the catalog's backoff). Raises DownloadError (a
    StageError) when yt-dlp or the network fails, with `transient` set as
    `is_transient_error` reads it (429/5xx/timeouts: try again later; 404: no),
    and a plain StageError for bad ids, playlists and missing English captions;
    nothing is left in raw_dir then. `force` ignores the archive and finished files."""
    import yt_dlp

    params = catalog.stages.download
    if video_id is None and url is None:
        raise StageError(STAGE, None, "give a video_id (YouTube) or a url")
    if video_id is not None:
        try:
            validate_video_id(video_id)
        except InvalidVideoId as e:
            raise StageError(STAGE, video_id, str(e)) from None
    source = "url" if url is not None else "youtube"
    target = url if url is not None else youtube_url(video_id)
    if url is not None and not re.match(r"^https?://", url):
        raise StageError(STAGE, video_id, f"not an http(s) URL: {url!r}")

    if video_id is not None and not force and _finished(catalog, video_id):
        return _skipped(video_id, source, "already downloaded")
    if source == "youtube" or is_youtube_url(target):
        require_js_runtime(video_id)  # one clear error now, not a failed challenge per video

    archive = set() if force else load_archive(catalog)
    # yt-dlp's cache (YouTube player code) is local files: under the data root when it
    # is local, else in the local cache folder (io.local_cache_dir).
    cachedir = str(Path(catalog.root) / ".cache" / "yt-dlp") if is_local(catalog.root) \
        else str(fio.local_cache_dir("yt-dlp"))
    logger = _YdlLogger()
    staging: Path | None = None
    video_dir: Path | None = None
    created = False
    vid = video_id
    try:
        # 1. metadata only: pick captions before fetching any media.
        with yt_dlp.YoutubeDL(ydl_options(params, archive=archive, logger=logger, cachedir=cachedir)) as ydl:
            info = ydl.extract_info(target, download=False)
            if info is None:  # yt-dlp skipped a recorded id before any request
                return _skipped(video_id, source, "in download archive")
            if info.get("_type") in ("playlist", "multi_video"):
                entries = [e for e in info.get("entries") or [] if e]
                if len(entries) != 1:
                    raise StageError(STAGE, video_id, f"{target} is a playlist of {len(entries)} videos; "
                                                      "give one video URL")
                info = entries[0]
            if vid is None:
                vid = sanitize_video_id(str(info.get("id") or ""))
            if ydl.in_download_archive(info):
                return _skipped(vid, source, "in download archive")
        if str(info.get("extractor_key", "")).lower() == "youtube":
            source = "youtube"
            require_js_runtime(vid)  # a URL that led to YouTube: the media needs the runtime
        if vid is not None and not force and video_id is None and _finished(catalog, vid):
            return _skipped(vid, source, "already downloaded")
        caption = choose_captions(info.get("subtitles"), info.get("automatic_captions"),
                                  params.caption_langs, params.caption_formats)
        if caption is None:
            offered = sorted(set(info.get("subtitles") or {}) | set(info.get("automatic_captions") or {}))
            raise StageError(STAGE, vid, f"no English captions ({'/'.join(params.caption_langs)}) "
                                         f"in {'/'.join(params.caption_formats)}; offered: {offered or 'none'}")

        # 2. download into a staging folder (next to raw_dir, or local for a remote root), then install.
        staging, video_dir, created = _staging(catalog, vid)
        opts = ydl_options(params, archive=set(), logger=logger, outdir=staging, video_id=vid,
                           caption=caption, cachedir=cachedir)
        bar = track(f"download {vid}", None, "bytes")
        opts["progress_hooks"] = [_bytes_progress(bar)]
        with yt_dlp.YoutubeDL(opts) as ydl:
            done = ydl.process_ie_result(info, download=True)
            archive_id = ydl._make_archive_id(done) if hasattr(ydl, "_make_archive_id") else _archive_id(done)
        bar.close()
        info_json = _check_and_describe(vid, staging, done, caption, source, target)
        size = (staging / info_json["video_file"]).stat().st_size
        _install(catalog, vid, staging, info_json)
        staging = None
        _record_archive(catalog, archive_id or _archive_id(done))
        return {"video_id": vid, "status": "downloaded", "source": source,
                "caption_kind": caption.kind, "caption_lang": caption.lang,
                "video_file": info_json["video_file"], "bytes": size}
    except StageError:
        _cleanup(staging, video_dir, created)
        raise
    except Exception as exc:  # yt-dlp's DownloadError and friends
        _cleanup(staging, video_dir, created)
        raise _download_error(vid, exc) from exc


def _bytes_progress(bar: Tracker):
    """A yt-dlp progress hook feeding `bar` the bytes of every file of the download
    (video and captions: yt-dlp reports each file from zero), summed."""
    done: dict[str, float] = {}
    totals: dict[str, float] = {}

    def hook(d: dict[str, Any]) -> None:
        name = str(d.get("filename") or d.get("tmpfilename") or "")
        got = d.get("downloaded_bytes")
        size = d.get("total_bytes") or d.get("total_bytes_estimate")
        if got is not None:
            done[name] = float(got)
        if size:
            totals[name] = float(size)
        total = sum(max(totals.get(k, 0.0), done.get(k, 0.0)) for k in done.keys() | totals.keys())
        bar.update(completed=sum(done.values()), total=total or None)

    return hook


def _check_and_describe(video_id: str, staging: Path, done: dict[str, Any], caption: CaptionChoice,
                        source: str, url: str) -> dict[str, Any]:
    """Final check (the video and the caption file exist and are not empty) and info.json."""
    paths = [Path(d["filepath"]) for d in done.get("requested_downloads") or [] if d.get("filepath")]
    video = next((p for p in paths if p.parent == staging and p.is_file() and p.stat().st_size > 0), None)
    if video is None:
        raise StageError(STAGE, video_id, "yt-dlp finished but no video file was written")
    subs = done.get("requested_subtitles") or {}
    sub_path = (subs.get(caption.lang) or {}).get("filepath")
    sub_file = Path(sub_path) if sub_path else staging / f"{video_id}.{caption.lang}.{caption.ext}"
    if not sub_file.is_file() or sub_file.stat().st_size == 0:
        raise StageError(STAGE, video_id, f"caption track {caption.lang} ({caption.kind}) was not written")
    # The size comes from the file: a generic page states none, and a rotated
    # (phone) video is decoded at its displayed size, which yt-dlp may not know.
    width, height, duration = done.get("width"), done.get("height"), done.get("duration")
    try:
        probed = probe_video(video)
    except VideoProbeError as e:
        log.warning("download %s: %s", video_id, e)
    else:
        width, height = probed.width, probed.height
        if not duration and probed.duration_s == probed.duration_s:  # not NaN
            duration = probed.duration_s
    return {
        "id": video_id,
        "title": done.get("title"),
        "channel": done.get("channel") or done.get("uploader"),
        "duration": duration,
        "url": done.get("webpage_url") or url,
        "source": source,
        "caption_kind": caption.kind,
        "caption_lang": caption.lang,
        "caption_file": sub_file.name,
        "video_file": video.name,
        "width": width,
        "height": height,
    }


# -- local folders -------------------------------------------------------------------
@dataclass(frozen=True)
class LocalVideo:
    video_id: str
    video_path: Path
    caption_path: Path | None


def _find_caption(video: Path) -> Path | None:
    """`<stem>.en.vtt` / `.en.srt` / `.en.json3`, then `<stem>.vtt` etc. (contract order)."""
    for lang in ("en.", "en-orig.", ""):
        for ext in CAPTION_EXTS:
            cand = video.with_name(f"{video.stem}.{lang}{ext}")
            if cand.is_file():
                return cand
    return None


def scan_local_folder(folder: str | os.PathLike) -> list[LocalVideo]:
    """Videos (.mp4/.mkv/.webm/.mov) in `folder` with their caption file (or None)."""
    root = Path(folder)
    if not root.is_dir():
        raise StageError(STAGE, None, f"local folder not found: {root}")
    found = []
    for p in sorted(root.iterdir()):
        if p.is_file() and p.suffix.lower() in VIDEO_EXTS:
            found.append(LocalVideo(sanitize_video_id(p.stem), p, _find_caption(p)))
    return found


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # no copy of a large file when on the same disk
    except OSError:
        shutil.copy2(src, dst)


def import_local_video(catalog: Catalog, video_path: str | os.PathLike,
                       caption_path: str | os.PathLike | None, video_id: str | None = None,
                       *, force: bool = False) -> str:
    """Hard-link (or copy) one local video and its caption file into raw_dir and
    write info.json with source "local". Returns the video id."""
    video_path = Path(video_path)
    vid = video_id or sanitize_video_id(video_path.stem)
    try:
        validate_video_id(vid)
    except InvalidVideoId as e:
        raise StageError(STAGE, vid, str(e)) from None
    if not video_path.is_file():
        raise StageError(STAGE, vid, f"video file not found: {video_path}")
    if caption_path is None or not Path(caption_path).is_file():
        raise StageError(STAGE, vid, f"no caption file next to {video_path.name} "
                                     f"(expected {video_path.stem}.en.vtt/.en.srt/.en.json3)")
    caption_path = Path(caption_path)
    done = None if force else _finished(catalog, vid)
    if done is not None:
        # Same id from another file (an earlier run, another folder, a download):
        # skipping would silently give this file the other one's video.
        if done.get("source") != "local" or done.get("title") != video_path.stem:
            other = done.get("title") or done.get("url") or vid
            raise StageError(STAGE, vid, f"{video_path.name} and the already imported {other!r} "
                                         f"({done.get('source')}) map to the same video id")
        return vid
    try:
        probed = probe_video(video_path)
    except VideoProbeError as e:
        raise StageError(STAGE, vid, f"{video_path.name} has no readable video stream ({e})") from None
    width, height = probed.width, probed.height
    duration = probed.duration_s if probed.duration_s == probed.duration_s else None  # NaN: unknown
    staging, video_dir, created = _staging(catalog, vid)
    try:
        video_name = f"{vid}{video_path.suffix.lower()}"
        # "<stem>.en.vtt" -> lang "en"; "<stem>.vtt" -> no language tag.
        tail = caption_path.name[len(video_path.stem):] if caption_path.name.startswith(video_path.stem) \
            else "." + caption_path.name.split(".", 1)[-1]
        parts = tail.lstrip(".").split(".")
        lang = parts[0] if len(parts) == 2 and re.fullmatch(r"[A-Za-z0-9-]{1,16}", parts[0]) else None
        caption_name = f"{vid}.{lang + '.' if lang else ''}{parts[-1].lower()}"
        _link_or_copy(video_path, staging / video_name)
        _link_or_copy(caption_path, staging / caption_name)
        info_json = {
            "id": vid, "title": video_path.stem, "channel": None, "duration": duration,
            "url": video_path.resolve().as_uri(), "source": "local",
            # User-supplied caption files count as manual captions.
            "caption_kind": "manual", "caption_lang": lang or "en", "caption_file": caption_name,
            "video_file": video_name, "width": width, "height": height,
        }
        _install(catalog, vid, staging, info_json)
    except BaseException:
        _cleanup(staging, video_dir, created)
        raise
    return vid


@dataclass
class LocalImport:
    """What `import_local_folder` did: the ids imported, and the videos that
    could not be imported ({video_id, stage, error} each)."""

    video_ids: list[str] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)


def import_local_folder(catalog: Catalog, folder: str | os.PathLike, *, strict: bool = False) -> LocalImport:
    """Import every video of `folder` (see `scan_local_folder`). A video that fails
    (no caption file, unreadable, an id clash) is logged and recorded in
    `failures` so the others go on; `strict=True` raises its StageError instead."""
    result = LocalImport()
    seen: dict[str, Path] = {}
    items = scan_local_folder(folder)
    bar = track("import", len(items), "videos")
    for k, item in enumerate(items):
        bar.update(completed=k)
        try:
            if item.video_id in seen:
                raise StageError(STAGE, item.video_id, f"{item.video_path.name} and {seen[item.video_id].name} "
                                                       "map to the same video id")
            seen[item.video_id] = item.video_path
            result.video_ids.append(import_local_video(catalog, item.video_path, item.caption_path, item.video_id))
        except StageError as e:
            if strict:
                raise
            log.warning("%s", e)
            result.failures.append({"video_id": item.video_id, "stage": STAGE, "error": str(e)})
    bar.update(completed=len(items))
    bar.close()
    return result
