"""The JavaScript runtime yt-dlp needs for YouTube: the `deno` package's binary is
found, runs, and is what the yt-dlp options name (and what real yt-dlp accepts);
without a runtime a YouTube download fails with one clear error before any request
(a loopback proxy that every yt-dlp request goes through counts them)."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from emotionclip.core.catalog import load_catalog
from emotionclip.stages.download import (
    JS_RUNTIME_ENV,
    DownloadError,
    DownloadParams,
    JsRuntimeMissing,
    _YdlLogger,
    find_js_runtime,
    is_transient_error,
    is_youtube_url,
    js_runtime_options,
    run_download,
    ydl_options,
)


class CountingProxy:
    """A loopback 'proxy' that records each request line (yt-dlp sends `CONNECT
    www.youtube.com:443` first) and hangs up: every request yt-dlp makes shows here."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.05)  # so the serving thread sees `_stop` soon
        self._stop = threading.Event()
        self.requests: list[str] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    self.requests.append(conn.recv(1024).decode("latin-1").split("\r\n", 1)[0])
                except OSError:
                    self.requests.append("")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def __enter__(self) -> "CountingProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()


@pytest.fixture
def catalog(tmp_path):
    return load_catalog(data_root=str(tmp_path / "data"), overrides={"stages.download": {
        "retries": 0, "sleep_requests_s": 0, "sleep_interval_s": 0.001, "max_sleep_interval_s": 0.01}})


@pytest.fixture
def proxy(monkeypatch):
    with CountingProxy() as p:
        for var in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
            monkeypatch.setenv(var, p.url)
        for var in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(var, raising=False)
        yield p


def test_the_deno_package_binary_is_found_and_runs(monkeypatch):
    import deno

    monkeypatch.delenv(JS_RUNTIME_ENV, raising=False)
    rt = find_js_runtime()
    assert rt is not None and rt.name == "deno" and rt.path == deno.find_deno_bin()
    assert os.path.isfile(rt.path) and os.access(rt.path, os.X_OK)
    out = subprocess.run([rt.path, "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("deno ")


def test_yt_dlp_options_name_the_deno_binary_and_yt_dlp_accepts_it(monkeypatch, tmp_path):
    import deno
    import yt_dlp

    monkeypatch.delenv(JS_RUNTIME_ENV, raising=False)
    opts = ydl_options(DownloadParams(), archive=set(), logger=_YdlLogger())
    assert opts["js_runtimes"] == {"deno": {"path": deno.find_deno_bin()}} == js_runtime_options()
    with yt_dlp.YoutubeDL({**opts, "cachedir": False}) as ydl:
        # yt-dlp runs `deno --version` itself and checks its minimum version
        info = ydl._js_runtimes["deno"].info
    assert info is not None and info.supported and info.path == deno.find_deno_bin()


def test_env_override_names_a_binary_or_turns_the_runtime_off(monkeypatch):
    import deno

    monkeypatch.setenv(JS_RUNTIME_ENV, deno.find_deno_bin())
    assert js_runtime_options() == {"deno": {"path": deno.find_deno_bin()}}
    monkeypatch.setenv(JS_RUNTIME_ENV, "none")
    assert find_js_runtime() is None and js_runtime_options() == {}
    monkeypatch.setenv(JS_RUNTIME_ENV, "/nonexistent/deno")
    assert find_js_runtime() is None


def test_youtube_urls_are_recognised():
    assert is_youtube_url("https://www.youtube.com/watch?v=dQw4w9WgXcQ")
    assert is_youtube_url("https://youtu.be/dQw4w9WgXcQ") and is_youtube_url("https://m.youtube.com/watch?v=x")
    assert not is_youtube_url("http://127.0.0.1:8000/show/ep1.html")
    assert not is_youtube_url("https://notyoutube.com/watch?v=x")


def test_youtube_download_without_a_runtime_fails_before_any_request(catalog, proxy, monkeypatch):
    monkeypatch.setenv(JS_RUNTIME_ENV, "none")
    for kwargs in ({"video_id": "dQw4w9WgXcQ"}, {"url": "https://www.youtube.com/watch?v=dQw4w9WgXcQ"}):
        with pytest.raises(JsRuntimeMissing, match=r"\[download\].*JavaScript runtime.*pip install deno") as exc:
            run_download(catalog, **kwargs)
        assert "\n" not in str(exc.value)
        assert not is_transient_error(exc.value)  # the task must not retry it
    assert proxy.requests == []
    assert not (Path(catalog.root) / "videos").exists()


def test_with_the_runtime_the_same_download_does_reach_the_network(catalog, proxy, monkeypatch):
    """The control for the test above: the proxy does see yt-dlp's requests."""
    monkeypatch.delenv(JS_RUNTIME_ENV, raising=False)
    with pytest.raises(DownloadError):
        run_download(catalog, video_id="dQw4w9WgXcQ")
    assert proxy.requests and proxy.requests[0].startswith("CONNECT www.youtube.com:443")
