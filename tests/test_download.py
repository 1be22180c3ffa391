"""Download stage with REAL yt-dlp against loopback HTTP servers (127.0.0.1):
a page whose <video> has an mp4 <source> and an English captions <track>,
throttling/server errors that clear up (yt-dlp's own retries within a call, or
a later call when `is_transient_error` says so), 429 forever, 404, refused
connections, a page without English captions, bad ids; the archive on re-runs;
local folders."""

from __future__ import annotations

import json
import pickle
import socket
from pathlib import Path

import httpx
import pytest
from yt_dlp.networking.exceptions import CertificateVerifyError, TransportError

from emotionclip.core.catalog import load_catalog
from emotionclip.core.ffmpeg import run_ffmpeg
from emotionclip.stages.download import (
    CaptionChoice,
    DownloadError,
    DownloadParams,
    LocalImport,
    _YdlLogger,
    choose_captions,
    import_local_folder,
    import_local_video,
    is_transient_error,
    run_download,
    scan_local_folder,
    select_format,
    ydl_options,
)
from emotionclip.core.errors import StageError
from emotionclip.sample import make_test_video
from loopback import LoopbackServer, Route

VTT = b"WEBVTT\n\n00:00:00.000 --> 00:00:00.800\nhello there\n"


@pytest.fixture(scope="module")
def mp4(tmp_path_factory) -> bytes:
    path = make_test_video(tmp_path_factory.mktemp("media") / "v.mp4", duration_s=1.0, width=320, height=240, fps=10)
    return path.read_bytes()


def _page(lang: str | None = "en", kind: str = "captions") -> bytes:
    track = f'<track kind="{kind}" srclang="{lang}" label="English" src="/media/ep1.{lang}.vtt">' if lang else ""
    return (b'<!doctype html><html><head><title>Episode 1</title></head><body><video controls>'
            b'<source src="/media/ep1.mp4" type="video/mp4">' + track.encode() + b"</video></body></html>")


def _routes(mp4: bytes, *, page_fail=(), mp4_fail=(), lang="en") -> dict[str, Route]:
    return {
        "/show/ep1.html": Route(_page(lang), "text/html", fail=list(page_fail)),
        "/media/ep1.mp4": Route(mp4, "video/mp4", fail=list(mp4_fail)),
        f"/media/ep1.{lang}.vtt": Route(VTT, "text/vtt"),
    }


@pytest.fixture
def catalog(tmp_path):
    # Tiny sleeps and backoff so yt-dlp's retries take milliseconds.
    return load_catalog(data_root=str(tmp_path / "data"), overrides={"stages.download": {
        "retries": 2, "sleep_requests_s": 0, "sleep_interval_s": 0.001, "max_sleep_interval_s": 0.01}})


def _videos_dir(catalog) -> Path:
    return Path(catalog.root) / "videos"


def _leftovers(catalog) -> list[str]:
    root = _videos_dir(catalog)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


# -- pure choices -------------------------------------------------------------------
def _fmt(fid, w, h, vcodec="avc1.4d401e", acodec="none", tbr=100.0, **kw):
    return {"format_id": fid, "width": w, "height": h, "vcodec": vcodec, "acodec": acodec, "tbr": tbr,
            "protocol": "https", **kw}


def test_select_format_smallest_with_small_edge_at_least_min():
    formats = [
        _fmt("audio", None, None, vcodec="none", acodec="mp4a.40.2", tbr=128),
        _fmt("144p", 256, 144), _fmt("240p", 426, 240), _fmt("360p-vp9", 640, 360, vcodec="vp9", tbr=200),
        _fmt("360p", 640, 360, tbr=300), _fmt("360p-av1", 640, 360, vcodec="av01.0.05M.08", tbr=150),
        _fmt("480p", 854, 480), _fmt("360p-muxed", 640, 360, acodec="mp4a.40.2", tbr=700),
    ]
    # 360p is the smallest with a smaller edge >= 256; h264 first among equal sizes, then bytes
    assert select_format(formats, 256)["format_id"] == "360p"
    assert select_format(formats, 240)["format_id"] == "240p"
    # portrait: the width is the smaller edge
    portrait = [_fmt("p1", 144, 256), _fmt("p2", 240, 426), _fmt("p3", 360, 640)]
    assert select_format(portrait, 256)["format_id"] == "p3"


def test_select_format_fallbacks():
    small = [_fmt("a", 256, 144), _fmt("b", 426, 240)]
    assert select_format(small, 256)["format_id"] == "b"  # nothing big enough: the biggest
    unknown = [{"format_id": "x", "url": "u1", "ext": "mp4"}, {"format_id": "y", "url": "u2", "ext": "mp4"}]
    assert select_format(unknown, 256)["format_id"] == "y"  # sizes unknown: yt-dlp's best (last)
    assert select_format([_fmt("aud", None, None, vcodec="none", acodec="opus")], 256) is None
    assert select_format([_fmt("sb", 160, 90, vcodec="none", ext="mhtml")], 256) is None  # storyboards


def test_choose_captions_manual_first_then_automatic():
    langs, fmts = ["en", "en-orig"], ["json3", "vtt", "srt"]
    auto = {"en": [{"ext": "json3"}, {"ext": "vtt"}], "en-orig": [{"ext": "vtt"}], "de": [{"ext": "vtt"}]}
    assert choose_captions({"en": [{"ext": "srv3"}, {"ext": "vtt"}]}, auto, langs, fmts) == \
        CaptionChoice("en", "manual", "vtt")
    assert choose_captions({"en-GB": [{"ext": "json3"}]}, auto, langs, fmts) == CaptionChoice("en-GB", "manual", "json3")
    assert choose_captions({"live_chat": [{"ext": "json"}], "fr": [{"ext": "vtt"}]}, auto, langs, fmts) == \
        CaptionChoice("en", "automatic", "json3")
    assert choose_captions(None, {"en-orig": [{"ext": "vtt"}]}, langs, fmts) == CaptionChoice("en-orig", "automatic", "vtt")
    # a generic page's track has only a URL: the extension comes from it
    assert choose_captions({"en": [{"url": "http://x/c.srt?sig=1"}]}, None, langs, fmts) == CaptionChoice("en", "manual", "srt")
    assert choose_captions({"en": [{"ext": "ttml"}]}, {"de": [{"ext": "vtt"}]}, langs, fmts) is None
    assert choose_captions({}, {}, langs, fmts) is None


def test_ydl_options_request_exactly_the_chosen_track(tmp_path):
    params = DownloadParams()
    opts = ydl_options(params, archive=set(), logger=_YdlLogger(), outdir=tmp_path, video_id="abc",
                       caption=CaptionChoice("en-orig", "automatic", "json3"))
    assert (opts["writesubtitles"], opts["writeautomaticsub"]) == (False, True)
    assert opts["subtitleslangs"] == ["en-orig"] and opts["subtitlesformat"] == "json3"
    assert opts["outtmpl"]["default"] == str(tmp_path / "abc.%(ext)s")  # named by id, never by title
    assert opts["retries"] == 10 and opts["sleep_interval_requests"] == 1.0 and opts["sleep_interval"] == 5.0
    assert opts["retry_sleep_functions"]["http"](1) == 10.0 and opts["retry_sleep_functions"]["http"](9) == 30.0


# -- real yt-dlp against loopback servers ------------------------------------------------
def test_download_page_with_video_and_english_track(catalog, mp4):
    with LoopbackServer(_routes(mp4)) as srv:
        summary = run_download(catalog, url=srv.url("/show/ep1.html"))
    vid = summary["video_id"]
    assert summary["status"] == "downloaded" and summary["source"] == "url"
    assert (summary["caption_kind"], summary["caption_lang"]) == ("manual", "en")
    raw = Path(catalog.artifact("raw_dir", vid))
    info = json.loads(Path(catalog.artifact("info", vid)).read_text())
    assert info["id"] == vid and info["source"] == "url" and info["url"] == srv.url("/show/ep1.html")
    assert (info["caption_kind"], info["caption_lang"]) == ("manual", "en")
    assert (raw / info["video_file"]).read_bytes() == mp4
    assert (raw / info["caption_file"]).read_bytes() == VTT
    assert info["caption_file"].endswith(".en.vtt")
    assert (info["width"], info["height"]) == (320, 240) and info["duration"] == pytest.approx(1.0, abs=0.1)
    assert info["title"].startswith("Episode 1")
    assert set(info) == {"id", "title", "channel", "duration", "url", "source", "caption_kind", "caption_lang",
                         "caption_file", "video_file", "width", "height"}
    # nothing but raw/ and info.json: the staging folder was renamed away
    assert sorted(p.name for p in raw.parent.iterdir()) == ["info.json", "raw"]
    archive = Path(catalog.artifact("download_archive")).read_text().split()
    assert archive[-1] == vid


def test_rerun_skips_through_the_archive(catalog, mp4, tmp_path):
    with LoopbackServer(_routes(mp4)) as srv:
        first = run_download(catalog, url=srv.url("/show/ep1.html"))
        again = run_download(catalog, url=srv.url("/show/ep1.html"))
        assert srv.count("/media/ep1.mp4") == 1  # the media was fetched once
        assert again == {"video_id": first["video_id"], "status": "skipped", "reason": "in download archive",
                         "source": "url"}
        # by id, a finished video is skipped without a single request
        n = len(srv.requests)
        assert run_download(catalog, video_id=first["video_id"])["status"] == "skipped"
        assert len(srv.requests) == n
        # force downloads again
        assert run_download(catalog, url=srv.url("/show/ep1.html"), force=True)["status"] == "downloaded"
        assert srv.count("/media/ep1.mp4") == 2
    assert Path(catalog.artifact("download_archive")).read_text().count(first["video_id"]) == 1


def test_archived_youtube_id_is_skipped_by_yt_dlp_without_a_request(catalog):
    """yt-dlp's download_archive option knows a YouTube id from the URL alone: with
    the raw files pruned and no network here, only the archive can make this pass."""
    archive = Path(catalog.artifact("download_archive"))
    archive.parent.mkdir(parents=True)
    archive.write_text("youtube dQw4w9WgXcQ\n")
    assert run_download(catalog, video_id="dQw4w9WgXcQ") == {
        "video_id": "dQw4w9WgXcQ", "status": "skipped", "reason": "in download archive", "source": "youtube"}
    assert _leftovers(catalog) == []


def _retried_like_the_task(call, tries: int):
    """What the Prefect task does: call again while `is_transient_error` says so.
    Returns (result, the errors retried)."""
    errors: list[BaseException] = []
    for _ in range(tries):
        try:
            return call(), errors
        except Exception as e:
            if not is_transient_error(e):
                raise
            errors.append(e)
    raise errors[-1]


def test_media_server_errors_are_retried_by_yt_dlp_within_one_call(catalog, mp4):
    with LoopbackServer(_routes(mp4, mp4_fail=[500, 503])) as srv:
        summary = run_download(catalog, url=srv.url("/show/ep1.html"))
        assert srv.statuses("/media/ep1.mp4") == [500, 503, 200]  # yt-dlp's own http retries (retries=2)
        assert srv.statuses("/show/ep1.html") == [200]
    assert summary["status"] == "downloaded" and "attempts" not in summary
    assert (Path(catalog.artifact("raw_dir", summary["video_id"])) / summary["video_file"]).read_bytes() == mp4


def test_transient_page_errors_are_left_to_the_caller_and_classified(catalog, mp4):
    """yt-dlp does not retry a generic page: each throttled/failed fetch is one
    DownloadError marked transient, and the next call (the Prefect retry) goes on."""
    with LoopbackServer(_routes(mp4, page_fail=[429, 500], mp4_fail=[500])) as srv:
        summary, errors = _retried_like_the_task(lambda: run_download(catalog, url=srv.url("/show/ep1.html")), 4)
        assert srv.statuses("/show/ep1.html") == [429, 500, 200]  # one request per call: no loop of ours
        assert srv.statuses("/media/ep1.mp4") == [500, 200]  # yt-dlp's own http retries
    assert [(type(e), e.http_status, e.transient) for e in errors] == [(DownloadError, 429, True),
                                                                      (DownloadError, 500, True)]
    assert summary["status"] == "downloaded"
    assert (Path(catalog.artifact("raw_dir", summary["video_id"])) / summary["video_file"]).read_bytes() == mp4


def test_429_is_transient_and_leaves_nothing_behind(catalog, mp4):
    with LoopbackServer(_routes(mp4, page_fail=[429] * 20)) as srv:
        with pytest.raises(DownloadError, match=r"\[download\].*429") as e:
            run_download(catalog, url=srv.url("/show/ep1.html"))
        assert srv.count("/show/ep1.html") == 1  # no hand-written retry loop
        assert srv.count("/media/ep1.mp4") == 0
    assert isinstance(e.value, StageError) and e.value.stage == "download"
    assert (e.value.http_status, e.value.transient) == (429, True) and is_transient_error(e.value)
    assert _leftovers(catalog) == [] and not Path(catalog.artifact("download_archive")).exists()


def test_429_on_the_media_is_transient(catalog, mp4):
    # yt-dlp's http downloader retries only 5xx; a throttled media request is the caller's to retry.
    with LoopbackServer(_routes(mp4, mp4_fail=[429])) as srv:
        with pytest.raises(DownloadError) as e:
            run_download(catalog, url=srv.url("/show/ep1.html"))
        assert srv.statuses("/media/ep1.mp4") == [429]
        assert run_download(catalog, url=srv.url("/show/ep1.html"))["status"] == "downloaded"
    assert is_transient_error(e.value) and e.value.http_status == 429


@pytest.mark.parametrize("status,requests,transient", [(429, 1, True), (404, 1, False), (503, 3, False)])
def test_caption_track_errors_are_classified(catalog, mp4, status, requests, transient):
    """yt-dlp wraps a failed subtitle download in its own DownloadError; the status
    is found behind it. A 5xx that yt-dlp retried itself (retries=2: 3 requests)
    until it gave up is not transient: another try would multiply the attempts."""
    routes = _routes(mp4)
    routes["/media/ep1.en.vtt"].fail = [status] * 5
    with LoopbackServer(routes) as srv:
        with pytest.raises(DownloadError, match="subtitles") as e:
            run_download(catalog, url=srv.url("/show/ep1.html"))
        assert srv.count("/media/ep1.en.vtt") == requests
    assert is_transient_error(e.value) is transient
    if status != 503:  # yt-dlp reports its give-up as text only
        assert e.value.http_status == status
    assert _leftovers(catalog) == []


def test_media_5xx_after_yt_dlp_gave_up_is_not_retried_again(catalog, mp4):
    with LoopbackServer(_routes(mp4, mp4_fail=[500] * 10)) as srv:
        with pytest.raises(DownloadError, match="Giving up after 2 retries") as e:
            run_download(catalog, url=srv.url("/show/ep1.html"))
        assert srv.statuses("/media/ep1.mp4") == [500, 500, 500]  # yt-dlp's retries=2, no more
    assert not is_transient_error(e.value)
    assert _leftovers(catalog) == []


def test_404_page_fails_at_once_and_is_not_transient(catalog, mp4):
    with LoopbackServer(_routes(mp4)) as srv:
        with pytest.raises(DownloadError, match=r"\[download\].*404") as e:
            run_download(catalog, url=srv.url("/show/missing.html"))
        assert srv.count("/show/missing.html") == 1  # a 404 is not retried
    assert (e.value.http_status, e.value.transient) == (404, False) and not is_transient_error(e.value)
    assert _leftovers(catalog) == []


def test_refused_connection_is_transient(catalog):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError) as e:
        run_download(catalog, url=f"http://127.0.0.1:{port}/show/ep1.html")
    assert e.value.http_status is None and is_transient_error(e.value)
    assert _leftovers(catalog) == []


def test_is_transient_error_on_raw_exceptions():
    """The classifier also reads exceptions that did not go through run_download
    (what the task may see): yt-dlp's network errors and Python's own."""
    assert is_transient_error(TransportError(cause=TimeoutError("timed out")))
    assert is_transient_error(ConnectionResetError(104, "Connection reset by peer"))
    assert is_transient_error(TimeoutError())
    try:
        try:
            raise ConnectionResetError("reset")
        except ConnectionResetError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert is_transient_error(outer)  # found behind __cause__
    assert not is_transient_error(CertificateVerifyError(cause=OSError("bad certificate")))
    assert not is_transient_error(ValueError("HTTP Error 429 in the text is not a status"))
    assert not is_transient_error(StageError("download", "x", "no English captions"))
    try:
        try:
            int("x")
        except ValueError:
            raise StageError("download", "x", "invalid video id") from None
    except StageError as hidden:
        assert not is_transient_error(hidden)
    assert is_transient_error(DownloadError("x", "boom", transient=True, http_status=503))
    assert not is_transient_error(DownloadError("x", "gone", transient=False, http_status=404))


def test_is_transient_error_reads_httpx_errors_behind_a_stage_error():
    """The search stage wraps httpx errors in its StageError (`raise ... from e`)."""
    request = httpx.Request("GET", "http://127.0.0.1/results")

    def wrapped(cause: BaseException) -> StageError:
        try:
            raise cause
        except BaseException as e:
            try:
                raise StageError("search", None, f"search failed: {e}") from e
            except StageError as outer:
                return outer

    throttled = httpx.HTTPStatusError("429", request=request, response=httpx.Response(429, request=request))
    gone = httpx.HTTPStatusError("404", request=request, response=httpx.Response(404, request=request))
    assert is_transient_error(wrapped(throttled))
    assert not is_transient_error(wrapped(gone))
    assert is_transient_error(wrapped(httpx.ConnectTimeout("timed out", request=request)))
    assert is_transient_error(wrapped(httpx.ReadError("reset", request=request)))
    assert not is_transient_error(wrapped(httpx.UnsupportedProtocol("ftp://", request=request)))


def test_download_error_pickles():
    # Task results and states may cross processes.
    e = pickle.loads(pickle.dumps(DownloadError("abc", "HTTP Error 429", transient=True, http_status=429)))
    assert (type(e), str(e), e.video_id, e.transient, e.http_status) == \
        (DownloadError, "[download] video abc: HTTP Error 429", "abc", True, 429)


def test_404_media_leaves_nothing_behind(catalog, mp4):
    routes = _routes(mp4)
    del routes["/media/ep1.mp4"]
    with LoopbackServer(routes) as srv:
        with pytest.raises(StageError, match=r"\[download\] video ep1-1: .*404"):
            run_download(catalog, url=srv.url("/show/ep1.html"))
    assert _leftovers(catalog) == []  # no staging folder, no empty video folder


def test_404_media_keeps_an_earlier_good_download(catalog, mp4):
    with LoopbackServer(_routes(mp4)) as srv:
        vid = run_download(catalog, url=srv.url("/show/ep1.html"))["video_id"]
        del srv.routes["/media/ep1.mp4"]
        with pytest.raises(StageError, match="404"):
            run_download(catalog, url=srv.url("/show/ep1.html"), force=True)
    assert _leftovers(catalog) == [vid, f"{vid}/info.json", f"{vid}/raw", f"{vid}/raw/{vid}.en.vtt",
                                   f"{vid}/raw/{vid}.mp4"]


def test_video_without_english_captions_is_a_stage_error(catalog, mp4):
    with LoopbackServer(_routes(mp4, lang="fr")) as srv:
        with pytest.raises(StageError, match=r"\[download\] video ep1-1: no English captions.*offered: \['fr'\]") as e:
            run_download(catalog, url=srv.url("/show/ep1.html"))
        assert srv.count("/media/ep1.mp4") == 0  # decided before fetching any media
    assert not is_transient_error(e.value)  # another try gives the same answer
    assert _leftovers(catalog) == []


@pytest.mark.parametrize("bad", ["../etc", "a/b", "..", "", "x y"])
def test_bad_ids_are_rejected_before_any_path_or_request(catalog, bad):
    with pytest.raises(StageError, match=r"\[download\].*invalid video id") as e:
        run_download(catalog, video_id=bad)
    assert not is_transient_error(e.value)
    assert _leftovers(catalog) == []


def test_not_http_urls_are_rejected(catalog):
    with pytest.raises(StageError, match="not an http"):
        run_download(catalog, url="file:///etc/passwd")


# -- local folders ------------------------------------------------------------------------
def test_import_local_folder(catalog, tmp_path):
    src = tmp_path / "my videos"
    make_test_video(src / "Show.S01E01.mp4", duration_s=1.0, width=240, height=320, fps=10)
    (src / "Show.S01E01.en.srt").write_text("1\n00:00:00,000 --> 00:00:00,800\nhi\n")
    make_test_video(src / "clip two.mp4", duration_s=1.0, width=160, height=120, fps=10)
    (src / "clip two.vtt").write_bytes(VTT)
    make_test_video(src / "no captions.mp4", duration_s=0.5, width=160, height=120, fps=10)
    (src / "notes.txt").write_text("not a video")

    found = {v.video_id: v for v in scan_local_folder(src)}
    assert set(found) == {"Show_S01E01", "clip_two", "no_captions"}
    assert found["no_captions"].caption_path is None

    result = import_local_folder(catalog, src)
    assert isinstance(result, LocalImport)
    assert result.video_ids == ["Show_S01E01", "clip_two"]  # the one without captions is skipped, the others go on
    assert [(f["video_id"], f["stage"]) for f in result.failures] == [("no_captions", "download")]
    assert "no caption file" in result.failures[0]["error"]
    info = json.loads(Path(catalog.artifact("info", "Show_S01E01")).read_text())
    assert info["source"] == "local" and (info["width"], info["height"]) == (240, 320)
    assert (info["video_file"], info["caption_file"], info["caption_lang"]) == \
        ("Show_S01E01.mp4", "Show_S01E01.en.srt", "en")
    raw = Path(catalog.artifact("raw_dir", "Show_S01E01"))
    assert (raw / info["video_file"]).read_bytes() == (src / "Show.S01E01.mp4").read_bytes()
    info2 = json.loads(Path(catalog.artifact("info", "clip_two")).read_text())
    assert info2["caption_file"] == "clip_two.vtt" and info2["caption_lang"] == "en"
    assert not Path(catalog.artifact("video_dir", "no_captions")).exists()

    with pytest.raises(StageError, match=r"\[download\] video no_captions: no caption file"):
        import_local_folder(catalog, src, strict=True)
    # a local video is finished: the download stage does not go to the network for it
    assert run_download(catalog, video_id="clip_two")["status"] == "skipped"


def test_import_local_video_reports_the_displayed_size_of_a_rotated_video(catalog, tmp_path):
    src = make_test_video(tmp_path / "land.mp4", duration_s=1.0, width=320, height=240, fps=10)
    phone = tmp_path / "phone.mp4"
    # Stored landscape, displayed portrait (a display matrix, as phones write it).
    run_ffmpeg(["-y", "-display_rotation", "90", "-i", str(src), "-c", "copy", str(phone)])
    (tmp_path / "phone.en.vtt").write_bytes(VTT)
    vid = import_local_video(catalog, phone, tmp_path / "phone.en.vtt")
    info = json.loads(Path(catalog.artifact("info", vid)).read_text())
    assert (info["width"], info["height"]) == (240, 320)
    assert info["duration"] == pytest.approx(1.0, abs=0.1)


def test_import_local_video_rejects_unreadable_video(catalog, tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00" * 100)
    cap = tmp_path / "broken.en.vtt"
    cap.write_bytes(VTT)
    with pytest.raises(StageError, match=r"video broken: .*no readable video stream"):
        import_local_video(catalog, bad, cap)
    assert _leftovers(catalog) == []


def test_missing_local_folder(catalog, tmp_path):
    with pytest.raises(StageError, match="local folder not found"):
        import_local_folder(catalog, tmp_path / "nope")
