"""Model loading (paper refs offline, local folders, tiny built on first use) and
the `emotionclip models` commands."""

from __future__ import annotations

import threading

import pytest
from typer.testing import CliRunner

from emotionclip.zoo import tiny
from emotionclip import zoo
from emotionclip.core.catalog import load_catalog
from emotionclip.core.errors import ModelNotAvailable


def test_offline_hub_model_is_a_clear_error():
    # conftest sets HF_HUB_OFFLINE=1 and an empty HF_HOME: the paper weights are not there.
    ref = load_catalog(profile="paper").model_ref("emotion")
    assert ref == "j-hartmann/emotion-english-distilroberta-base"
    with pytest.raises(ModelNotAvailable) as e:
        zoo.load_emotion_model(ref)
    msg = str(e.value)
    assert ref in msg and "emotionclip models fetch" in msg and "emotion" in msg
    with pytest.raises(ModelNotAvailable, match="fullstop-punctuation-multilang-large"):
        zoo.load_punctuation_model(load_catalog(profile="paper").model_ref("punctuation"))


def test_missing_local_folder(tmp_path):
    with pytest.raises(ModelNotAvailable, match="does not exist"):
        zoo.load_emotion_model(str(tmp_path / "prefetched" / "emotion"))


def test_tiny_built_on_first_use_and_cached(tmp_path):
    cat = load_catalog(profile="tiny", overrides={"models_dir": str(tmp_path / "m")})
    ref = cat.model_ref("emotion")
    assert ref == str(tmp_path / "m" / "tiny" / "emotion")
    tok, model = zoo.load_emotion_model(ref)
    assert (tmp_path / "m" / "tiny" / "emotion" / "config.json").exists()
    assert not (tmp_path / "m" / "tiny" / "punctuation").exists()  # only what was asked for
    assert zoo.load_emotion_model(ref)[1] is model  # once per process
    assert not model.training
    assert zoo.model_max_tokens(tok, model) == 512


def test_parallel_first_use_builds_once(tmp_path, monkeypatch):
    calls = []
    real = tiny.build_tiny_models

    def counting(*args, **kwargs):
        calls.append(kwargs.get("only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(tiny, "build_tiny_models", counting)
    ref = str(tmp_path / "tiny" / "punctuation")
    errors = []

    def worker():
        try:
            zoo.ensure_model(ref)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert calls == [["punctuation"]]
    assert (tmp_path / "tiny" / "punctuation" / "model.safetensors").exists()


def test_hub_ids_are_not_touched():
    assert zoo.ensure_model("j-hartmann/emotion-english-distilroberta-base") == \
        "j-hartmann/emotion-english-distilroberta-base"


# -- CLI -------------------------------------------------------------------------

def _cli():
    from emotionclip.cli.models import app

    return app


def test_cli_build_tiny(tmp_path):
    res = CliRunner().invoke(_cli(), ["build-tiny", "--models-dir", str(tmp_path), "--only", "emotion"])
    assert res.exit_code == 0, res.output
    assert str(tmp_path / "tiny" / "emotion") in res.output
    assert (tmp_path / "tiny" / "emotion" / "tokenizer.json").exists()
    bad = CliRunner().invoke(_cli(), ["build-tiny", "--models-dir", str(tmp_path), "--only", "nope"])
    assert bad.exit_code == 2


def test_cli_fetch_offline_fails_clearly(tmp_path):
    # Offline (conftest): the hub downloads fail, each one named; exit code 1.
    # The detector and OpenCLIP entries are set local/empty to keep this test off the network.
    res = CliRunner().invoke(_cli(), [
        "fetch", "--out", str(tmp_path / "w"),
        "--set", "profiles.paper.detector=tiny/detector.pt", "--set", "profiles.paper.clip_pretrained=null",
    ])
    assert res.exit_code == 1
    out = res.output
    assert "fullstop-punctuation-multilang-large" in out and "emotion-english-distilroberta-base" in out
    assert "2 download(s) failed" in out and "needs internet" in out
    assert "skip detector" in out
