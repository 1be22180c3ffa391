"""Search stage: response shapes -> candidates, every filter, the httpx adapter
(real httpx and real youtube-search-python against a loopback server), the
yt-dlp caption check (real yt-dlp against a loopback page), clear errors."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import httpx
import pytest

from emotionclip.core.catalog import SearchParams, load_catalog
from emotionclip.core.io import parquet_metadata, read_parquet
from emotionclip.stages.search import (
    Candidate,
    PlaylistHit,
    SearchError,
    YoutubeSearchPythonBackend,
    candidate_from_ysp,
    candidate_from_ytdlp,
    parse_duration,
    probe_candidate,
    run_search,
    search_candidates,
)
from loopback import LoopbackServer, Route

FIX = Path(__file__).parent / "fixtures" / "search"


def _load(name: str):
    return json.loads((FIX / name).read_text())


class RecordedYspBackend:
    """Replays recorded youtube-search-python result dicts (no network)."""

    name = "youtube-search-python"

    def __init__(self):
        self.videos_by_query = _load("ysp_videos_search.json")
        self.calls: list[str] = []

    def videos(self, query, limit):
        self.calls.append(query)
        for item in self.videos_by_query[query]["result"][:limit]:
            c = candidate_from_ysp(item, query)
            if c is not None:
                yield c

    def playlists(self, query, limit):
        return iter(())

    def playlist_videos(self, playlist, query):
        return iter(())


def _catalog(tmp_path, **search):
    return load_catalog(data_root=str(tmp_path / "data"), overrides={"stages.search": search} if search else None)


def _no_probe(c):
    raise AssertionError(f"unexpected metadata check of {c.id}")


# -- parsing ---------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("1:02:03", 3723.0), ("45:10", 2710.0), ("59", 59.0), (3723, 3723.0), (None, None),
    ("LIVE", None), ("", None), ("1:2:3:4", None),
])
def test_parse_duration(text, expected):
    assert parse_duration(text) == expected


def test_ysp_result_dicts_parse_into_candidates():
    items = _load("ysp_videos_search.json")["TV series"]["result"]
    cands = [candidate_from_ysp(i, "TV series") for i in items]
    first = cands[0]
    assert first == Candidate(id="aaaaaaaaaa1", title="Drama S01E01 | Full Episode", channel="Drama Channel",
                              duration_s=3723.0, url="https://www.youtube.com/watch?v=aaaaaaaaaa1",
                              has_english_captions=None, query="TV series", backend="youtube-search-python")
    assert [c.duration_s for c in cands] == [3723.0, 750.0, 4200.0, 3480.0, None, 2400.0]
    assert candidate_from_ysp({"type": "channel", "id": "UCx"}) is None


def test_ytdlp_flat_entries_parse_into_candidates():
    entries = _load("ytdlp_flat_search.json")["entries"]
    cands = [candidate_from_ytdlp(e, "TV series") for e in entries]
    assert cands[3] is None  # a channel among the results
    kept = [c for c in cands if c]
    assert [c.id for c in kept] == ["aaaaaaaaaa1", "bbbbbbbbbb2", "_a9SWtcaNj8", "hhhhhhhhhhh"]
    assert kept[0].duration_s == 3723.0 and kept[0].channel == "Drama Channel" and kept[0].backend == "yt-dlp"
    assert kept[3].duration_s is None
    assert all(c.has_english_captions is None for c in kept)  # flat entries carry no caption list
    # a full (non-flat) entry does say which captions exist
    full = dict(entries[0], subtitles={"fr": [{"ext": "vtt"}]}, automatic_captions={"en-orig": [{"ext": "json3"}]})
    assert candidate_from_ytdlp(full).has_english_captions is True
    full["automatic_captions"] = {"de": [{"ext": "vtt"}]}
    assert candidate_from_ytdlp(full).has_english_captions is False


# -- filters -----------------------------------------------------------------------
def test_every_filter_on_recorded_results():
    params = SearchParams(queries=["TV series", "TV shows"], exclude_titles=["excluded movie title"],
                          require_english_captions=False, max_videos=100)
    accepted, stats = search_candidates(params, RecordedYspBackend(), prober=None)
    ids = [c.id for c in accepted]
    # 40:00 is exactly the paper's minimum and is kept; dedup keeps the first sighting's query.
    assert ids == ["aaaaaaaaaa1", "eeeeeeeeee5", "fffffffffff", "ggggggggggg"]
    assert accepted[0].query == "TV series"
    assert stats.too_short == 2  # the 12:30 trailer, and the live video whose length is unknown
    assert stats.excluded_id == 1  # 7YpF6DntOYw: in BoLD, the default exclusion list
    assert stats.excluded_title == 1  # case and spacing do not matter
    assert stats.duplicate == 1
    assert stats.accepted == 4 and stats.seen == 9


def test_cap_stops_the_search_early():
    backend = RecordedYspBackend()
    params = SearchParams(queries=["TV series", "TV shows"], require_english_captions=False, max_videos=2)
    accepted, _ = search_candidates(params, backend)
    assert [c.id for c in accepted] == ["aaaaaaaaaa1", "ccccccccc_3"]
    assert backend.calls == ["TV series"]  # the second query was never sent


def test_min_duration_and_exclusions_are_parameters():
    params = SearchParams(queries=["TV series"], min_duration_s=0, exclude_ids=[], require_english_captions=False)
    ids = [c.id for c in search_candidates(params, RecordedYspBackend())[0]]
    assert ids == ["aaaaaaaaaa1", "bbbbbbbbbb2", "7YpF6DntOYw", "ccccccccc_3", "ddddddddd-4", "eeeeeeeeee5"]


def test_english_captions_are_checked_only_when_unknown_and_needed():
    checked: list[str] = []
    answers = {"aaaaaaaaaa1": True, "ccccccccc_3": False, "ddddddddd-4": True, "eeeeeeeeee5": False,
               "ggggggggggg": True}

    def prober(c: Candidate):
        checked.append(c.id)
        if c.id == "fffffffffff":
            raise OSError("video unavailable")
        return {"has_english_captions": answers[c.id], "duration_s": 5000.0 if c.id == "ddddddddd-4" else None}

    params = SearchParams(queries=["TV series", "TV shows"], require_english_captions=True)
    accepted, stats = search_candidates(params, RecordedYspBackend(), prober)
    assert [c.id for c in accepted] == ["aaaaaaaaaa1", "ddddddddd-4", "ggggggggggg"]
    # too-short, excluded and duplicate candidates are never checked (no request spent on them);
    # the live video's unknown length is filled in by the check
    assert checked == ["aaaaaaaaaa1", "ccccccccc_3", "ddddddddd-4", "eeeeeeeeee5", "fffffffffff", "ggggggggggg"]
    assert accepted[1].duration_s == 5000.0 and all(c.has_english_captions for c in accepted)
    assert stats.no_english_captions == 2 and stats.probe_failed == 1


def test_known_caption_answers_skip_the_check():
    params = SearchParams(queries=["TV series"], require_english_captions=True, exclude_ids=[])

    class Known(RecordedYspBackend):
        def videos(self, query, limit):
            for c in super().videos(query, limit):
                c.has_english_captions = c.id != "aaaaaaaaaa1"
                c.duration_s = c.duration_s or 3000.0
                yield c

    accepted, stats = search_candidates(params, Known(), prober=_no_probe)
    assert [c.id for c in accepted] == ["7YpF6DntOYw", "ccccccccc_3", "ddddddddd-4", "eeeeeeeeee5"]
    assert stats.no_english_captions == 1


def test_playlist_mode_walks_each_playlist():
    playlist = _load("ytdlp_flat_playlist.json")

    class Playlists(RecordedYspBackend):
        def videos(self, query, limit):
            raise AssertionError("playlist mode must not run a video search")

        def playlists(self, query, limit):
            yield PlaylistHit("PLtvshows0000000000000000000000001", "TV shows full episodes",
                              "https://www.youtube.com/playlist?list=PLtvshows0000000000000000000000001")

        def playlist_videos(self, pl, query):
            for e in playlist["entries"]:
                yield candidate_from_ytdlp(e, query, playlist_id=pl.id)

    params = SearchParams(queries=["tv shows"], mode="playlists", require_english_captions=False)
    accepted, _ = search_candidates(params, Playlists())
    assert [(c.id, c.playlist_id) for c in accepted] == [
        ("iiiiiiiiiii", "PLtvshows0000000000000000000000001"), ("jjjjjjjjjjj", "PLtvshows0000000000000000000000001")]


def test_run_search_writes_the_candidates_parquet(tmp_path):
    cat = _catalog(tmp_path, queries=["TV series", "TV shows"], max_videos=3)
    answers = {"aaaaaaaaaa1": True, "eeeeeeeeee5": True, "fffffffffff": True}
    df = run_search(cat, backend=RecordedYspBackend(),
                    prober=lambda c: {"has_english_captions": answers.get(c.id, False), "duration_s": None})
    path = cat.artifact("candidates")
    on_disk = read_parquet(path)
    assert list(on_disk["id"]) == list(df["id"]) == ["aaaaaaaaaa1", "eeeeeeeeee5", "fffffffffff"]
    assert list(on_disk.columns) == ["id", "title", "channel", "duration_s", "url", "has_english_captions",
                                     "query", "backend", "playlist_id"]
    meta = parquet_metadata(path)
    assert meta["fingerprint"] == cat.stage_fingerprint("search")
    assert json.loads(meta["stats"])["accepted"] == 3
    assert not [p for p in Path(path).parent.iterdir() if p.name.startswith(".")]  # no temp file left


def test_run_search_with_no_result_writes_an_empty_table(tmp_path):
    cat = _catalog(tmp_path, queries=["TV series"], min_duration_s=99999)
    df = run_search(cat, backend=RecordedYspBackend(), prober=_no_probe)
    assert len(df) == 0 and len(read_parquet(cat.artifact("candidates"))) == 0


# -- youtube-search-python through the httpx adapter (real httpx, loopback) ----------------
def _innertube_server(fail: list[int] | None = None) -> LoopbackServer:
    shapes = _load("innertube.json")

    def search(method, path, headers, body):
        req = json.loads(body)
        if req.get("continuation") == "PAGE2":
            return 200, "application/json", json.dumps(shapes["search_page2"]).encode()
        if req.get("params") == "EgIQAw%3D%3D":  # the library's "playlists only" filter
            return 200, "application/json", json.dumps(shapes["playlists_search"]).encode()
        return 200, "application/json", json.dumps(shapes["search_page1"]).encode()

    def browse(method, path, headers, body):
        assert json.loads(body)["browseId"] == "VLPLtvshows0000000000000000000000001"
        return 200, "application/json", json.dumps(shapes["playlist_browse"]).encode()

    return LoopbackServer({
        "/youtubei/v1/search": Route(handler=search, fail=list(fail or [])),
        "/youtubei/v1/browse": Route(handler=browse),
    })


def test_httpx_is_current_and_the_library_alone_breaks():
    """The reason for the adapter: the library's own call fails on httpx >= 0.28."""
    from youtubesearchpython.core.requests import RequestCore

    assert tuple(int(x) for x in httpx.__version__.split(".")[:2]) >= (0, 28)
    core = RequestCore()
    core.url, core.data = "http://127.0.0.1:9/never", {}
    with pytest.raises(TypeError, match="proxies"):
        core.syncPostRequest()


def test_adapter_sends_the_search_through_httpx(tmp_path):
    with _innertube_server() as srv:
        backend = YoutubeSearchPythonBackend(api_origin=srv.origin)
        cands = list(backend.videos("TV series", limit=10))
        posts = [r for r in srv.requests if r.path == "/youtubei/v1/search"]
    assert [c.id for c in cands] == ["aaaaaaaaaa1", "bbbbbbbbbb2", "eeeeeeeeee5"]  # page 1 + continuation
    assert cands[0].duration_s == 3723.0 and cands[0].channel == "Drama Channel"
    assert len(posts) == 2
    first = json.loads(posts[0].body)
    assert first["query"] == "TV series" and first["client"] == {"hl": "en", "gl": "US"}
    assert posts[0].headers["User-Agent"].startswith("Mozilla/5.0")
    assert json.loads(posts[1].body)["continuation"] == "PAGE2"


def test_run_search_end_to_end_through_the_adapter(tmp_path):
    cat = _catalog(tmp_path, queries=["TV series"], require_english_captions=False)
    with _innertube_server() as srv:
        df = run_search(cat, backend=YoutubeSearchPythonBackend(api_origin=srv.origin))
    assert list(df["id"]) == ["aaaaaaaaaa1", "eeeeeeeeee5"]  # the 12:30 trailer is too short


def test_playlist_mode_through_the_adapter(tmp_path):
    cat = _catalog(tmp_path, queries=["tv shows"], mode="playlists", require_english_captions=False)
    with _innertube_server() as srv:
        df = run_search(cat, backend=YoutubeSearchPythonBackend(api_origin=srv.origin))
        assert srv.count("/youtubei/v1/browse") == 1
    assert list(df["id"]) == ["iiiiiiiiiii", "jjjjjjjjjjj"]
    assert set(df["playlist_id"]) == {"PLtvshows0000000000000000000000001"}
    assert list(df["duration_s"]) == [2700.0, 2760.0]


def test_http_error_is_a_search_error(tmp_path):
    cat = _catalog(tmp_path, queries=["TV series"], require_english_captions=False)
    with _innertube_server(fail=[503]) as srv:
        with pytest.raises(SearchError, match=r"\[search\].*'TV series'.*503"):
            run_search(cat, backend=YoutubeSearchPythonBackend(api_origin=srv.origin))
    assert not Path(cat.artifact("candidates")).exists()


def test_unreachable_server_is_a_search_error(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cat = _catalog(tmp_path, queries=["TV series"], require_english_captions=False)
    with pytest.raises(SearchError, match="youtube-search-python search for 'TV series' failed"):
        run_search(cat, backend=YoutubeSearchPythonBackend(api_origin=f"http://127.0.0.1:{port}", timeout=2))


def test_unparseable_answer_is_a_search_error(tmp_path):
    cat = _catalog(tmp_path, queries=["TV series"], require_english_captions=False)
    srv = LoopbackServer({"/youtubei/v1/search": Route(b"<html>consent page</html>", "text/html")})
    with srv:
        with pytest.raises(SearchError, match="Could not parse"):
            run_search(cat, backend=YoutubeSearchPythonBackend(api_origin=srv.origin))


# -- caption check with real yt-dlp (loopback pages) ----------------------------------------
def _page(track_lang: str | None) -> bytes:
    track = f'<track kind="captions" srclang="{track_lang}" src="/c.vtt">' if track_lang else ""
    return (f'<!doctype html><html><head><title>Episode</title></head><body><video>'
            f'<source src="/v.mp4" type="video/mp4">{track}</video></body></html>').encode()


def test_probe_reads_caption_tracks_with_yt_dlp():
    routes = {"/en.html": Route(_page("en"), "text/html"), "/fr.html": Route(_page("fr"), "text/html")}
    with LoopbackServer(routes) as srv:
        def probe(path):
            return probe_candidate(Candidate("x", None, None, None, srv.url(path)))

        en, fr = probe("/en.html"), probe("/fr.html")
        assert srv.count("/v.mp4") == 0  # metadata only, never the media
    assert en["has_english_captions"] is True and en["title"].startswith("Episode")
    assert fr["has_english_captions"] is False


def test_probe_of_a_missing_video_raises_and_the_filter_skips_it():
    with LoopbackServer({}) as srv:
        with pytest.raises(Exception, match="404"):
            probe_candidate(Candidate("x", None, None, None, srv.url("/gone.html")))
