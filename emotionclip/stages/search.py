"""Search stage: queries -> candidate videos, filtered as in the paper.

Paper (section 3.1, docs/design.md section 4): youtube-search-python with queries
such as "TV series" / "TV shows"; keep videos with English closed captions and
at least 40 minutes long; drop videos that appear in the downstream datasets
(by YouTube id and by title). The authors' code searched *playlists* for
"tv shows" and walked each playlist: `mode: playlists`.

Backends:
- `youtube-search-python` (the paper's). It is unmaintained and passes
  `proxies=` to httpx, which httpx 0.28 removed. `_HttpxAdapter` replaces the
  library's four request helpers (the only places it touches httpx); httpx
  itself reads HTTP(S)_PROXY / NO_PROXY from the environment, which is what
  the library's `proxies=` dict was built from.
- `yt-dlp`: `ytsearchN:<query>` (flat), and YouTube's playlist search page
  for the playlist mode.

English captions: neither backend's search results say which caption tracks
a video has, so `has_english_captions` is usually unknown (None). When the
catalog requires English captions, each candidate that passes the cheap
filters is checked with one yt-dlp metadata request (no media), under the
process-wide YouTube rate limit, until `max_videos` candidates are accepted.
That keeps the cap meaningful (the download stage would otherwise drop
videos after the cap was applied) at the price of one request per kept
candidate; the download stage checks again and fails cleanly if a track has
disappeared in between.

Exclusions (paper appendix A.1: videos of the downstream datasets removed by
YouTube id and title) come from `load_exclusions(catalog)`: the catalog's
`exclude_ids` / `exclude_titles` / `exclude_title_patterns` and the data root's
exclusion file. Known videos (`known`: ids the dataset already has or has given
up on, from the video registry) are dropped before any per-video request, and
neither `max_videos` nor a query's `results_per_query` counts them: a query whose
first page is all known goes on to its next page.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Iterator, Protocol
from urllib.parse import quote_plus

import pandas as pd
import pyarrow as pa

from emotionclip.core.catalog import Catalog, SearchParams
from emotionclip.core.errors import StageError
from emotionclip.core.exclusions import Exclusions, ExclusionsError, load_exclusions
from emotionclip.core.ids import InvalidVideoId, validate_video_id
from emotionclip.core.io import atomic_write_parquet

log = logging.getLogger(__name__)

STAGE = "search"
YOUTUBE_ORIGIN = "https://www.youtube.com"

CANDIDATES = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("title", pa.string()),
    pa.field("channel", pa.string()),
    pa.field("duration_s", pa.float64()),
    pa.field("url", pa.string(), nullable=False),
    pa.field("has_english_captions", pa.bool_()),  # null: unknown
    pa.field("query", pa.string()),
    pa.field("backend", pa.string()),
    pa.field("playlist_id", pa.string()),  # set in playlist mode
])


class SearchError(StageError):
    """A search that could not run (network, unparseable answer); names the query."""

    def __init__(self, message: str):
        super().__init__(STAGE, None, message)

    def __reduce__(self):
        return (type(self), (self.message,))


@dataclass
class Candidate:
    id: str
    title: str | None
    channel: str | None
    duration_s: float | None
    url: str
    has_english_captions: bool | None = None
    query: str | None = None
    backend: str | None = None
    playlist_id: str | None = None


@dataclass
class PlaylistHit:
    id: str
    title: str | None
    url: str


# -- parsing recorded response shapes ---------------------------------------------
def parse_duration(text: str | int | float | None) -> float | None:
    """'1:02:03' / '45:10' / '59' / 3723 -> seconds; None for live or unknown."""
    if text is None:
        return None
    if isinstance(text, (int, float)):
        return float(text)
    parts = str(text).strip().split(":")
    if not all(re.fullmatch(r"\d+", p) for p in parts) or len(parts) > 3:
        return None
    seconds = 0.0
    for p in parts:
        seconds = seconds * 60 + int(p)
    return seconds


def _channel_name(channel: Any) -> str | None:
    if isinstance(channel, dict):
        return channel.get("name")
    return channel


def candidate_from_ysp(item: dict[str, Any], query: str | None = None,
                       playlist_id: str | None = None) -> Candidate | None:
    """A youtube-search-python video dict (search result or playlist entry) -> Candidate."""
    if item.get("type", "video") != "video" or not item.get("id"):
        return None
    vid = str(item["id"])
    return Candidate(
        id=vid,
        title=item.get("title"),
        channel=_channel_name(item.get("channel")),
        duration_s=parse_duration(item.get("duration")),
        url=f"{YOUTUBE_ORIGIN}/watch?v={vid}",
        has_english_captions=None,  # not in search results
        query=query,
        backend="youtube-search-python",
        playlist_id=playlist_id,
    )


def candidate_from_ytdlp(entry: dict[str, Any], query: str | None = None,
                         playlist_id: str | None = None) -> Candidate | None:
    """A yt-dlp flat-playlist entry (`ytsearchN:` or a playlist) -> Candidate."""
    if not entry or not entry.get("id"):
        return None
    if entry.get("ie_key") not in (None, "Youtube") or entry.get("_type") not in (None, "url", "video"):
        return None  # a channel or playlist inside the results
    vid = str(entry["id"])
    captions = None
    if "subtitles" in entry or "automatic_captions" in entry:  # full (non-flat) entries
        captions = _has_english(entry.get("subtitles"), entry.get("automatic_captions"), ["en", "en-orig"])
    return Candidate(
        id=vid,
        title=entry.get("title"),
        channel=entry.get("channel") or entry.get("uploader"),
        duration_s=parse_duration(entry.get("duration")),
        url=f"{YOUTUBE_ORIGIN}/watch?v={vid}",
        has_english_captions=captions,
        query=query,
        backend="yt-dlp",
        playlist_id=playlist_id,
    )


def _has_english(subs: dict | None, auto: dict | None, langs: list[str],
                 formats: list[str] | None = None) -> bool:
    from emotionclip.stages.download import choose_captions

    return choose_captions(subs, auto, langs, formats or ["json3", "vtt", "srt"]) is not None


# -- youtube-search-python with current httpx --------------------------------------------
@functools.lru_cache(maxsize=1)
def _http_client():
    """One pooled client per process (the library made a new one per request)."""
    import httpx

    return httpx.Client()


class _HttpxAdapter:
    """Replaces youtube-search-python's request helpers (core/requests.py), which
    pass `proxies=` (removed in httpx 0.28). Same requests otherwise; HTTP errors
    raise (the library would go on and fail to parse an error page)."""

    api_origin: str = YOUTUBE_ORIGIN
    default_timeout: float = 10.0

    def _adapted_url(self) -> str:
        url = self.url
        if self.api_origin != YOUTUBE_ORIGIN and url.startswith(YOUTUBE_ORIGIN):
            url = self.api_origin + url[len(YOUTUBE_ORIGIN):]
        return url

    def _timeout(self) -> float:
        return self.timeout if self.timeout else self.default_timeout

    def syncPostRequest(self):  # noqa: N802 (the library's name)
        from youtubesearchpython.core.constants import userAgent

        r = _http_client().post(self._adapted_url(), headers={"User-Agent": userAgent}, json=self.data,
                                timeout=self._timeout())
        r.raise_for_status()
        return r

    def syncGetRequest(self):  # noqa: N802
        from youtubesearchpython.core.constants import userAgent

        r = _http_client().get(self._adapted_url(), headers={"User-Agent": userAgent}, timeout=self._timeout(),
                               cookies={"CONSENT": "YES+1"})
        r.raise_for_status()
        return r

    async def asyncPostRequest(self):  # noqa: N802
        import httpx
        from youtubesearchpython.core.constants import userAgent

        async with httpx.AsyncClient() as client:
            r = await client.post(self._adapted_url(), headers={"User-Agent": userAgent}, json=self.data,
                                  timeout=self._timeout())
            r.raise_for_status()
            return r

    async def asyncGetRequest(self):  # noqa: N802
        import httpx
        from youtubesearchpython.core.constants import userAgent

        async with httpx.AsyncClient() as client:
            r = await client.get(self._adapted_url(), headers={"User-Agent": userAgent},
                                 timeout=self._timeout(), cookies={"CONSENT": "YES+1"})
            r.raise_for_status()
            return r


@functools.lru_cache(maxsize=None)
def adapted(cls: type, api_origin: str = YOUTUBE_ORIGIN) -> type:
    """`cls` (a youtube-search-python class) with the httpx adapter mixed in.
    `api_origin` redirects its YouTube requests (a mirror, or a test server)."""
    return type(f"Adapted{cls.__name__}", (_HttpxAdapter, cls), {"api_origin": api_origin})


# -- backends ---------------------------------------------------------------------------
class SearchBackend(Protocol):
    name: str

    def videos(self, query: str, limit: int) -> Iterator[Candidate]: ...

    def playlists(self, query: str, limit: int) -> Iterator[PlaylistHit]: ...

    def playlist_videos(self, playlist: PlaylistHit, query: str) -> Iterator[Candidate]: ...


def _network_errors() -> tuple[type[BaseException], ...]:
    import httpx
    from yt_dlp.utils import DownloadError

    return (httpx.HTTPError, DownloadError, OSError)


class YoutubeSearchPythonBackend:
    """The paper's backend, through `_HttpxAdapter`."""

    name = "youtube-search-python"

    def __init__(self, *, api_origin: str = YOUTUBE_ORIGIN, language: str = "en", region: str = "US",
                 timeout: float = 10.0):
        self.api_origin = api_origin.rstrip("/")
        self.language, self.region, self.timeout = language, region, timeout

    def videos(self, query: str, limit: int) -> Iterator[Candidate]:
        from youtubesearchpython import VideosSearch

        search = adapted(VideosSearch, self.api_origin)(query, limit=limit, language=self.language,
                                                        region=self.region, timeout=self.timeout)
        n, used = 0, set()
        while True:
            for item in search.result()["result"]:
                cand = candidate_from_ysp(item, query)
                if cand is not None and n < limit:
                    n += 1
                    yield cand
            if n >= limit or not self._next_page(search, used):
                return

    def playlists(self, query: str, limit: int) -> Iterator[PlaylistHit]:
        from youtubesearchpython import PlaylistsSearch

        search = adapted(PlaylistsSearch, self.api_origin)(query, limit=limit, language=self.language,
                                                           region=self.region, timeout=self.timeout)
        n, used = 0, set()
        while True:
            for item in search.result()["result"]:
                if item.get("type") == "playlist" and item.get("id") and n < limit:
                    n += 1
                    yield PlaylistHit(item["id"], item.get("title"), f"{YOUTUBE_ORIGIN}/playlist?list={item['id']}")
            if n >= limit or not self._next_page(search, used):
                return

    @staticmethod
    def _next_page(search: Any, used: set[str]) -> bool:
        """Fetch the next page. The library never clears its continuation token
        after the last page and would fetch that page forever: stop on a token
        already used."""
        token = search.continuationKey
        if not token or token in used:
            return False
        used.add(token)
        return bool(search.next())

    def playlist_videos(self, playlist: PlaylistHit, query: str) -> Iterator[Candidate]:
        from youtubesearchpython.core.constants import ResultMode
        from youtubesearchpython.core.playlist import PlaylistCore

        core = adapted(PlaylistCore, self.api_origin)(playlist.url, None, ResultMode.dict, self.timeout)
        core.sync_create()
        while True:
            for item in core.result.get("videos") or []:
                cand = candidate_from_ysp(item, query, playlist_id=playlist.id)
                if cand is not None:
                    yield cand
            if not core.continuationKey:
                return
            core._next()


class YtDlpBackend:
    """yt-dlp's `ytsearchN:` and YouTube's playlist search page, flat (no per-video requests)."""

    name = "yt-dlp"

    def __init__(self, *, extra_opts: dict[str, Any] | None = None):
        self.extra_opts = extra_opts or {}

    def _flat(self, url: str) -> dict[str, Any]:
        import yt_dlp

        opts = {"extract_flat": "in_playlist", "quiet": True, "no_warnings": True, "skip_download": True,
                "noprogress": True, **self.extra_opts}
        with yt_dlp.YoutubeDL(opts) as ydl:
            return ydl.extract_info(url, download=False) or {}

    def videos(self, query: str, limit: int) -> Iterator[Candidate]:
        import yt_dlp

        # process=False: the search extractor's entries stay a lazy iterator, so a
        # consumer that stops (a full cap, enough new videos) stops the paging too;
        # processed, `ytsearchN:` would fetch all N results first. The entries are
        # the same url results the flat mode gives.
        opts = {"quiet": True, "no_warnings": True, "skip_download": True, "noprogress": True,
                **self.extra_opts}
        with yt_dlp.YoutubeDL(opts) as ydl:  # open while the entries are read
            info = ydl.extract_info(f"ytsearch{int(limit)}:{query}", download=False, process=False) or {}
            for entry in info.get("entries") or []:
                cand = candidate_from_ytdlp(entry, query)
                if cand is not None:
                    yield cand

    def playlists(self, query: str, limit: int) -> Iterator[PlaylistHit]:
        # sp=EgIQAw%3D%3D is YouTube's "playlists only" search filter.
        info = self._flat(f"{YOUTUBE_ORIGIN}/results?search_query={quote_plus(query)}&sp=EgIQAw%253D%253D")
        n = 0
        for entry in info.get("entries") or []:
            url = entry.get("url") or ""
            m = re.search(r"[?&]list=([A-Za-z0-9_-]+)", url)
            pid = entry.get("id") if entry.get("ie_key") == "YoutubeTab" else (m.group(1) if m else None)
            if pid and n < limit:
                n += 1
                yield PlaylistHit(pid, entry.get("title"), f"{YOUTUBE_ORIGIN}/playlist?list={pid}")

    def playlist_videos(self, playlist: PlaylistHit, query: str) -> Iterator[Candidate]:
        info = self._flat(playlist.url)
        for entry in info.get("entries") or []:
            cand = candidate_from_ytdlp(entry, query, playlist_id=playlist.id)
            if cand is not None:
                yield cand


def make_backend(name: str) -> SearchBackend:
    if name == "youtube-search-python":
        return YoutubeSearchPythonBackend()
    if name == "yt-dlp":
        return YtDlpBackend()
    raise SearchError(f"unknown search backend {name!r}")


# -- caption / duration check ------------------------------------------------------------
Prober = Callable[[Candidate], dict[str, Any]]


def probe_candidate(cand: Candidate, *, langs: list[str] | None = None, formats: list[str] | None = None,
                    extra_opts: dict[str, Any] | None = None) -> dict[str, Any]:
    """One yt-dlp metadata request (no media): {"has_english_captions", "duration_s", "title", "channel"}."""
    import yt_dlp

    from emotionclip.stages.download import js_runtime_options

    opts = {"quiet": True, "no_warnings": True, "skip_download": True, "noprogress": True,
            "noplaylist": True, "js_runtimes": js_runtime_options(), **(extra_opts or {})}
    with yt_dlp.YoutubeDL(opts) as ydl:
        info = ydl.extract_info(cand.url, download=False, process=False) or {}
    return {
        "has_english_captions": _has_english(info.get("subtitles"), info.get("automatic_captions"),
                                             langs or ["en", "en-orig"], formats),
        "duration_s": parse_duration(info.get("duration")),
        "title": info.get("title"),
        "channel": info.get("channel") or info.get("uploader"),
    }


# -- filters ------------------------------------------------------------------------------
@dataclass
class FilterStats:
    seen: int = 0
    accepted: int = 0
    invalid_id: int = 0
    known: int = 0  # already in the dataset (or given up on): no request spent on it
    excluded_id: int = 0
    excluded_title: int = 0
    duplicate: int = 0
    too_short: int = 0
    no_english_captions: int = 0
    probe_failed: int = 0


class CandidateFilter:
    """The paper's filters, applied in arrival order (cheap ones first, the
    per-video metadata check last and only when needed)."""

    def __init__(self, params: SearchParams, prober: Prober | None = None, *,
                 exclusions: Exclusions | None = None, known: Iterable[str] = frozenset()):
        self.params = params
        self.prober = prober
        # Without a catalog (a bare SearchParams) only the catalog's own rules apply.
        self.exclusions = exclusions if exclusions is not None else Exclusions.from_params(params)
        self.known = frozenset(known)
        self.seen_ids: set[str] = set()
        self.accepted: list[Candidate] = []
        self.stats = FilterStats()

    @property
    def full(self) -> bool:
        return len(self.accepted) >= self.params.max_videos

    def _needs_probe(self, c: Candidate) -> bool:
        return ((self.params.require_english_captions and c.has_english_captions is None)
                or (self.params.min_duration_s > 0 and c.duration_s is None))

    def offer(self, c: Candidate) -> bool:
        """Consider one candidate; True when it is accepted."""
        p, s = self.params, self.stats
        if self.full:
            return False
        s.seen += 1
        try:
            validate_video_id(c.id)
        except InvalidVideoId:
            s.invalid_id += 1
            return False
        if c.id in self.seen_ids:
            s.duplicate += 1
            return False
        self.seen_ids.add(c.id)
        if c.id in self.known:
            s.known += 1
            return False
        reason = self.exclusions.reason(c.id, c.title)
        if reason is not None:
            log.debug("search: %s left out: %s", c.id, reason)
            if c.id in self.exclusions:
                s.excluded_id += 1
            else:
                s.excluded_title += 1
            return False
        if c.duration_s is not None and c.duration_s < p.min_duration_s:
            s.too_short += 1
            return False
        if p.require_english_captions and c.has_english_captions is False:
            s.no_english_captions += 1
            return False
        if self._needs_probe(c) and self.prober is not None:
            try:
                found = self.prober(c)
            except Exception as e:  # one unavailable video must not end the search
                log.warning("search: metadata check of %s failed: %s", c.id, e)
                s.probe_failed += 1
                return False
            if c.has_english_captions is None:
                c.has_english_captions = found.get("has_english_captions")
            if c.duration_s is None:
                c.duration_s = found.get("duration_s")
            c.title = c.title or found.get("title")
            c.channel = c.channel or found.get("channel")
            if self.exclusions.title_reason(c.title) is not None:  # a title only the check revealed
                s.excluded_title += 1
                return False
        # Unknown after the check (or no checker): cannot show it meets the filter.
        if p.min_duration_s > 0 and (c.duration_s is None or c.duration_s < p.min_duration_s):
            s.too_short += 1
            return False
        if p.require_english_captions and not c.has_english_captions:
            s.no_english_captions += 1
            return False
        self.accepted.append(c)
        s.accepted += 1
        return True


# -- the stage ------------------------------------------------------------------------------
def _first_new(results: Iterable[Candidate], known: frozenset[str], limit: int) -> Iterator[Candidate]:
    """`results` up to and including the `limit`-th candidate that is not known."""
    new = 0
    try:
        for cand in results:
            yield cand
            if cand.id not in known:
                new += 1
                if new >= limit:
                    return
    finally:
        close = getattr(results, "close", None)
        if close is not None:  # end the backend's paging (and its yt-dlp session) now
            close()


def iter_candidates(backend: SearchBackend, params: SearchParams,
                    known: Iterable[str] = frozenset()) -> Iterator[Candidate]:
    """Raw candidates in order: each query's videos, or (playlist mode) each
    query's playlists walked one by one. Lazy, so a full cap stops requests.
    `results_per_query` counts videos not in `known`: the backend is asked for up
    to that many more (at most every known id can turn up) and is read lazily,
    so it fetches further pages only while known videos fill the ones it has."""
    known = frozenset(known)
    for query in params.queries:
        try:
            if params.mode == "videos":
                limit = params.results_per_query
                if known:
                    yield from _first_new(backend.videos(query, limit + len(known)), known, limit)
                else:
                    yield from backend.videos(query, limit)
            else:
                for playlist in list(backend.playlists(query, params.results_per_query)):
                    yield from backend.playlist_videos(playlist, query)
        except StageError:
            raise
        except _network_errors() as e:
            raise SearchError(f"{backend.name} search for {query!r} failed: {e}") from e
        except Exception as e:  # youtube-search-python raises bare Exception on unparseable answers
            raise SearchError(f"{backend.name} search for {query!r} failed: {type(e).__name__}: {e}") from e


def search_candidates(params: SearchParams, backend: SearchBackend, prober: Prober | None = None, *,
                      exclusions: Exclusions | None = None, known: Iterable[str] = frozenset()
                      ) -> tuple[list[Candidate], FilterStats]:
    """Run the queries through `backend` and the filters; stop at max_videos new
    videos. `exclusions`: default, the catalog rules in `params` alone; `known`: ids
    dropped before any per-video request and not counted by any limit."""
    known = frozenset(known)
    filt = CandidateFilter(params, prober, exclusions=exclusions, known=known)
    for cand in iter_candidates(backend, params, known):
        filt.offer(cand)
        if filt.full:
            break
    return filt.accepted, filt.stats


def candidates_table(candidates: list[Candidate]) -> pa.Table:
    return pa.Table.from_pylist([asdict(c) for c in candidates], schema=CANDIDATES)


def default_prober(catalog: Catalog, throttle: Callable[[], None] | None = None) -> Prober:
    """yt-dlp metadata check, spaced by yt-dlp's own request sleep; `throttle` is called
    before each probe (the Prefect task passes the global YouTube rate limit there)."""
    dl = catalog.stages.download

    def probe(c: Candidate) -> dict[str, Any]:
        if throttle is not None:
            throttle()
        return probe_candidate(c, langs=dl.caption_langs, formats=dl.caption_formats,
                               extra_opts={"sleep_interval_requests": dl.sleep_requests_s})

    return probe


def run_search(
    catalog: Catalog,
    *,
    backend: SearchBackend | None = None,
    prober: Prober | None = None,
    throttle: Callable[[], None] | None = None,
    known: Iterable[str] = frozenset(),
) -> pd.DataFrame:
    """Search with the catalog's queries, backend, mode and filters; write the
    candidates Parquet atomically to `catalog.artifact("candidates")` and return
    it. Columns: id, title, channel, duration_s, url, has_english_captions
    (null: unknown), query, backend, playlist_id. Raises SearchError (a
    StageError of stage "search") when a query cannot be run. `throttle` is called
    before every request that may reach YouTube (a rate limit from the orchestrator).
    `known`: video ids to leave out without a request (the flow passes the video
    registry's `skip_ids`); `max_videos` and `results_per_query` count new videos only.
    Exclusions: `load_exclusions(catalog)` (catalog rules + the data root's file)."""
    params = catalog.stages.search
    try:
        exclusions = load_exclusions(catalog)
    except ExclusionsError as e:  # a bad exclusion file must not be ignored
        raise SearchError(str(e)) from None
    backend = backend or make_backend(params.backend)
    if prober is None:  # only called for candidates whose captions/duration are unknown
        prober = default_prober(catalog, throttle)
    accepted, stats = search_candidates(params, backend, prober, exclusions=exclusions, known=known)
    table = candidates_table(accepted)
    atomic_write_parquet(catalog.artifact("candidates"), table, metadata={
        "fingerprint": catalog.stage_fingerprint(STAGE),
        "stats": json.dumps(asdict(stats)),
    })
    log.info("search: %s", asdict(stats))
    df = table.to_pandas()
    df.attrs["stats"] = asdict(stats)
    return df
