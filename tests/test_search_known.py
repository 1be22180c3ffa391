"""Search with known video ids (the video registry's `skip_ids`): real
youtube-search-python (through the httpx adapter) pages through a loopback
InnerTube server, and the caption check is real yt-dlp against loopback watch
pages, so both servers count requests. Known ids cost no metadata request, are
counted in the stats, and use up neither `max_videos` nor `results_per_query`:
a page of known videos makes the search go on to the next page."""

from __future__ import annotations

import json

import pytest

from emotionclip.core.catalog import load_catalog
from emotionclip.core.io import parquet_metadata
from emotionclip.stages.search import Candidate, YoutubeSearchPythonBackend, probe_candidate, run_search
from loopback import LoopbackServer, Route

# Three pages of full-length episodes; the first page is the one already in the dataset.
PAGES = [
    ["knownvid001", "knownvid002", "knownvid003"],
    ["newvideo004", "newvideo005", "newvideo006"],
    ["newvideo007", "newvideo008"],
]
FIRST_PAGE = set(PAGES[0])


def _renderer(vid: str) -> dict:
    return {"videoRenderer": {
        "videoId": vid, "title": {"runs": [{"text": f"Drama {vid} | Full Episode"}]},
        "ownerText": {"runs": [{"text": "Drama Channel",
                                "navigationEndpoint": {"browseEndpoint": {"browseId": "UCdramadramadramadrama00"}}}]},
        "thumbnail": {"thumbnails": []}, "lengthText": {"simpleText": "45:00"}}}


def _items(page: int) -> list[dict]:
    items: list[dict] = [{"itemSectionRenderer": {"contents": [_renderer(v) for v in PAGES[page]]}}]
    if page + 1 < len(PAGES):
        items.append({"continuationItemRenderer": {
            "continuationEndpoint": {"continuationCommand": {"token": f"PAGE{page + 2}"}}}})
    return items


def _search(method, path, headers, body):
    token = json.loads(body).get("continuation")
    if token is None:
        answer = {"contents": {"twoColumnSearchResultsRenderer": {"primaryContents": {
            "sectionListRenderer": {"contents": _items(0)}}}}}
    else:
        answer = {"onResponseReceivedCommands": [{"appendContinuationItemsAction": {
            "continuationItems": _items(int(token.removeprefix("PAGE")) - 1)}}]}
    return 200, "application/json", json.dumps(answer).encode()


def _watch_page(vid: str) -> bytes:
    return (f'<!doctype html><html><head><title>Episode {vid}</title></head><body><video>'
            f'<source src="/media/{vid}.mp4" type="video/mp4">'
            f'<track kind="captions" srclang="en" src="/media/{vid}.en.vtt"></video></body></html>').encode()


@pytest.fixture
def servers():
    """(search server, watch-page server): the InnerTube search, and one page per video."""
    watch = {f"/watch/{v}.html": Route(_watch_page(v), "text/html") for page in PAGES for v in page}
    with LoopbackServer({"/youtubei/v1/search": Route(handler=_search)}) as search_srv, \
            LoopbackServer(watch) as watch_srv:
        yield search_srv, watch_srv


def _prober(watch_srv: LoopbackServer):
    """The real yt-dlp metadata check, pointed at the loopback watch page of the video."""
    def probe(c: Candidate):
        return probe_candidate(Candidate(c.id, c.title, c.channel, c.duration_s, watch_srv.url(f"/watch/{c.id}.html")))

    return probe


def _catalog(tmp_path, **search):
    base = {"queries": ["TV series"], "require_english_captions": True, "min_duration_s": 2400}
    return load_catalog(data_root=str(tmp_path / "data"), overrides={"stages.search": {**base, **search}})


def _probed(watch_srv: LoopbackServer) -> list[str]:
    return [r.path.removeprefix("/watch/").removesuffix(".html") for r in watch_srv.requests]


def _search_posts(search_srv: LoopbackServer) -> int:
    return search_srv.count("/youtubei/v1/search", "POST")


def test_known_ids_cost_no_metadata_request(tmp_path, servers):
    search_srv, watch_srv = servers
    cat = _catalog(tmp_path, results_per_query=50, max_videos=100)
    df = run_search(cat, backend=YoutubeSearchPythonBackend(api_origin=search_srv.origin),
                    prober=_prober(watch_srv), known=FIRST_PAGE)
    new = PAGES[1] + PAGES[2]
    assert list(df["id"]) == new and bool(df["has_english_captions"].all())
    assert sorted(_probed(watch_srv)) == sorted(new)  # one check per new video, none for a known one
    assert not FIRST_PAGE & set(_probed(watch_srv))
    assert df.attrs["stats"]["known"] == 3 and df.attrs["stats"]["accepted"] == 5
    assert json.loads(parquet_metadata(cat.artifact("candidates"))["stats"])["known"] == 3


def test_a_page_of_known_videos_does_not_use_up_the_query(tmp_path, servers):
    """results_per_query=2 with the whole first page known: the search fetches page 2
    and keeps its first two videos (and stops there: page 3 is never requested)."""
    search_srv, watch_srv = servers
    cat = _catalog(tmp_path, results_per_query=2, max_videos=100)
    df = run_search(cat, backend=YoutubeSearchPythonBackend(api_origin=search_srv.origin),
                    prober=_prober(watch_srv), known=FIRST_PAGE)
    assert list(df["id"]) == ["newvideo004", "newvideo005"]
    assert _search_posts(search_srv) == 2
    assert _probed(watch_srv) == ["newvideo004", "newvideo005"]


def test_without_known_ids_the_limit_counts_every_video(tmp_path, servers):
    """The same search with nothing known: the first page fills the query's limit."""
    search_srv, watch_srv = servers
    cat = _catalog(tmp_path, results_per_query=2, max_videos=100)
    df = run_search(cat, backend=YoutubeSearchPythonBackend(api_origin=search_srv.origin),
                    prober=_prober(watch_srv))
    assert list(df["id"]) == ["knownvid001", "knownvid002"]
    assert _search_posts(search_srv) == 1


def test_max_videos_counts_new_videos_only(tmp_path, servers):
    search_srv, watch_srv = servers
    known = FIRST_PAGE | {"newvideo004"}
    cat = _catalog(tmp_path, results_per_query=50, max_videos=2)
    df = run_search(cat, backend=YoutubeSearchPythonBackend(api_origin=search_srv.origin),
                    prober=_prober(watch_srv), known=known)
    assert list(df["id"]) == ["newvideo005", "newvideo006"]
    assert _probed(watch_srv) == ["newvideo005", "newvideo006"]
    assert _search_posts(search_srv) == 2  # the cap was reached on page 2: page 3 never asked for
    assert df.attrs["stats"]["known"] == 4


def test_every_video_known_ends_the_search_with_no_metadata_request(tmp_path, servers):
    search_srv, watch_srv = servers
    everything = {v for page in PAGES for v in page}
    cat = _catalog(tmp_path, results_per_query=2, max_videos=10)
    df = run_search(cat, backend=YoutubeSearchPythonBackend(api_origin=search_srv.origin),
                    prober=_prober(watch_srv), known=everything)
    assert len(df) == 0 and watch_srv.requests == []
    assert _search_posts(search_srv) == 3  # walked to the last page, then stopped
    assert df.attrs["stats"]["known"] == 8


def test_known_videos_of_a_playlist_are_skipped_without_a_request(tmp_path):
    """Playlist mode (the authors' code): a walked playlist's known videos cost nothing."""
    from pathlib import Path

    shapes = json.loads((Path(__file__).parent / "fixtures" / "search" / "innertube.json").read_text())
    routes = {
        "/youtubei/v1/search": Route(handler=lambda *a: (200, "application/json",
                                                         json.dumps(shapes["playlists_search"]).encode())),
        "/youtubei/v1/browse": Route(handler=lambda *a: (200, "application/json",
                                                         json.dumps(shapes["playlist_browse"]).encode())),
    }
    checked: list[str] = []

    def prober(c: Candidate):
        checked.append(c.id)
        return {"has_english_captions": True, "duration_s": None}

    cat = _catalog(tmp_path, queries=["tv shows"], mode="playlists")
    with LoopbackServer(routes) as srv:
        df = run_search(cat, backend=YoutubeSearchPythonBackend(api_origin=srv.origin), prober=prober,
                        known={"iiiiiiiiiii"})
    assert list(df["id"]) == ["jjjjjjjjjjj"] and checked == ["jjjjjjjjjjj"]
    assert df.attrs["stats"]["known"] == 1
