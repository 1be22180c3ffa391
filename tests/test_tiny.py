"""Tiny profile builder: real tokenizers/transformers classes, random weights."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    RobertaForSequenceClassification,
    RobertaForTokenClassification,
    RobertaTokenizerFast,
)

from emotionclip.core import schemas
from emotionclip.zoo.tiny import build_tiny_models


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-a")
    return d, build_tiny_models(d, only=["punctuation", "emotion"])


def test_layout_and_classes(built):
    d, paths = built
    assert paths == {"punctuation": d / "tiny" / "punctuation", "emotion": d / "tiny" / "emotion"}
    tok = AutoTokenizer.from_pretrained(paths["punctuation"])
    assert isinstance(tok, RobertaTokenizerFast)
    assert tok.model_max_length == 512
    punct = AutoModelForTokenClassification.from_pretrained(paths["punctuation"])
    assert isinstance(punct, RobertaForTokenClassification)
    assert punct.config.num_hidden_layers == 2
    assert punct.config.id2label == {0: "0", 1: ".", 2: ",", 3: "?", 4: "-", 5: ":"}
    emo = AutoModelForSequenceClassification.from_pretrained(paths["emotion"])
    assert isinstance(emo, RobertaForSequenceClassification)
    assert [emo.config.id2label[i] for i in range(7)] == list(schemas.EMOTIONS)
    assert emo.config.vocab_size == len(tok)
    # no temporary folders left behind
    assert sorted(p.name for p in (d / "tiny").iterdir()) == ["emotion", "punctuation"]


def test_tokenizer_is_byte_level(built):
    _, paths = built
    tok = AutoTokenizer.from_pretrained(paths["emotion"])
    for text in ["Où est la gare? 日本語", "I love it 😍🎉", ""]:
        ids = tok(text)["input_ids"]
        assert tok.unk_token_id not in ids
        assert tok.decode(ids, skip_special_tokens=True).strip() == text


def test_deterministic(built, tmp_path):
    d, paths = built
    again = build_tiny_models(tmp_path, only=["punctuation", "emotion"])
    for part in ("punctuation", "emotion"):
        a = json.loads((paths[part] / "tokenizer.json").read_text())
        b = json.loads((again[part] / "tokenizer.json").read_text())
        assert a == b
        wa = load_file(str(paths[part] / "model.safetensors"))
        wb = load_file(str(again[part] / "model.safetensors"))
        assert wa.keys() == wb.keys()
        assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_existing_parts_are_kept(built):
    d, paths = built
    before = (paths["emotion"] / "model.safetensors").stat().st_mtime_ns
    build_tiny_models(d, only=["emotion"])
    assert (paths["emotion"] / "model.safetensors").stat().st_mtime_ns == before


def test_unknown_part(tmp_path):
    with pytest.raises(ValueError, match="unknown tiny model part"):
        build_tiny_models(tmp_path, only=["nope"])


def test_emotion_scores_depend_on_text(built):
    # The head is calibrated so scores vary with the text (else order tests would be vacuous).
    _, paths = built
    tok = AutoTokenizer.from_pretrained(paths["emotion"])
    model = AutoModelForSequenceClassification.from_pretrained(paths["emotion"]).eval()
    texts = ["I hate you.", "Thank you so much!", "Where were you last night?", "ok", "Get out of my house now."]
    with torch.no_grad():
        probs = model(**tok(texts, padding=True, return_tensors="pt")).logits.softmax(-1)
    assert probs[:, schemas.NEUTRAL_INDEX].max() - probs[:, schemas.NEUTRAL_INDEX].min() > 0.1


def test_detector_built(tmp_path):
    from ultralytics import YOLO

    paths = build_tiny_models(tmp_path, only=["detector"])
    assert paths["detector"] == tmp_path / "tiny" / "detector.pt"
    model = YOLO(str(paths["detector"]))
    assert model.task == "detect"
    assert 0 in model.names  # the person class the humans stage keeps
