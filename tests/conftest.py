"""Test environment: offline, nothing written to HOME (docs/design.md section 7)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_TMP = Path(tempfile.mkdtemp(prefix="emotionclip-tests-"))
os.environ.setdefault("PREFECT_HOME", str(_TMP / "prefect"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# The one place for Prefect test settings. Prefect reads its settings once per process:
# the temporary server's start-up timeout (20 s by default) must be raised here, before
# any test imports prefect, because a busy 2-core machine can take longer than that.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HOME", str(_TMP / "hf"))
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", str(_TMP / "ultralytics"))
os.environ.setdefault("YOLO_AUTOINSTALL", "false")
os.environ.setdefault("MPLCONFIGDIR", str(_TMP / "mpl"))
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TORCH_HOME", str(_TMP / "torch"))
# Local caches of runs on a remote data root (yt-dlp's, emotionclip.core.io.local_cache_dir).
os.environ.setdefault("EMOTIONCLIP_CACHE", str(_TMP / "cache"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    """One folder of tiny random-weight models for the whole session; the zoo builds a
    missing part there on first use (under a file lock)."""
    return tmp_path_factory.getbasetemp() / "models"


@pytest.fixture(scope="session")
def clip_corpus(tmp_path_factory):
    """Frame stores of 2 generated videos and a manifest DataFrame of 4 clips each
    (`training_data.make_corpus`), made once per session. Read-only: tests write their
    manifests and outputs into their own folders."""
    from training_data import make_corpus

    root = tmp_path_factory.mktemp("clip-corpus")
    cat, df = make_corpus(root, n_videos=2, clips_per_video=4, duration_s=2.5)
    return root, cat, df


@pytest.fixture(scope="session")
def box_corpus(tmp_path_factory):
    """The same with a white person box on black (`training_data.BOX_PX`) in every frame."""
    from training_data import make_corpus

    root = tmp_path_factory.mktemp("box-corpus")
    cat, df = make_corpus(root, n_videos=2, clips_per_video=4, box_video=True)
    return root, cat, df


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible server (SeaweedFS `weed mini`, tests/s3server.py) on
    127.0.0.1, one per session; tests use their own prefixes in its bucket."""
    from s3server import start_s3_server

    srv = start_s3_server(tmp_path_factory.mktemp("s3"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def s3_env(s3_server):
    """The server's credentials and endpoint in this process's environment (the
    standard AWS variables s3fs reads) for a test module, with s3fs's instance cache
    cleared so no client made under other settings is reused. Returns the server."""
    import s3fs

    with pytest.MonkeyPatch.context() as mp:
        for key, value in s3_server.env().items():
            mp.setenv(key, value)
        s3fs.S3FileSystem.clear_instance_cache()
        yield s3_server
    s3fs.S3FileSystem.clear_instance_cache()
