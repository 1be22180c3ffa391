"""Sentiment stage with the real tiny sequence classifier (random weights)."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from emotionclip.core import io, schemas
from emotionclip.core.catalog import load_catalog
from emotionclip.core.errors import StageError
from emotionclip.stages.sentiment import label_permutation, run_sentiment, score_texts, softmax
from emotionclip.zoo import load_emotion_model

TEXTS = [
    "I can't believe you did that to me!",
    "ok",
    "",
    "Where were you last night? I waited for hours and hours, and you never called.",
    "C'est incroyable, je ne sais pas quoi dire. 日本語もあります。",
    "I love it 😍🎉🔥",
    "no",
    "Get out of my house.",
]


@pytest.fixture(scope="module")
def emo(models_dir):
    return load_emotion_model(str(models_dir / "tiny" / "emotion"))


def one_by_one(texts, tok, model, max_length=512):
    rows = []
    for t in texts:
        enc = tok(t, truncation=True, max_length=max_length, return_tensors="pt")
        with torch.no_grad():
            rows.append(model(**enc).logits[0].numpy())
    return np.stack(rows)


def test_shapes_and_label_order(emo):
    tok, model = emo
    out = score_texts(TEXTS, tok, model)
    assert out.shape == (len(TEXTS), 7) and out.dtype == np.float32
    assert np.isfinite(out).all()
    assert [model.config.id2label[i] for i in range(7)] == list(schemas.EMOTIONS)
    assert score_texts([], tok, model).shape == (0, 7)


def test_batched_sorted_equals_one_by_one(emo):
    tok, model = emo
    texts = TEXTS * 3 + [f"sentence number {i} " * (i % 7 + 1) for i in range(20)]
    batched = score_texts(texts, tok, model, batch_size=5)
    reference = one_by_one(texts, tok, model)
    np.testing.assert_allclose(batched, reference, atol=1e-4)
    # the scores do differ between texts, so a mixed-up order would fail
    assert np.abs(reference - reference[0]).max() > 0.5


def test_label_order_read_from_config(emo):
    tok, model = emo
    # Same model with its output classes permuted and id2label to match:
    # scores in EMOTIONS order must not change.
    perm = [4, 0, 6, 2, 1, 5, 3]
    shuffled = copy.deepcopy(model)
    head = shuffled.classifier.out_proj
    with torch.no_grad():
        head.weight.copy_(model.classifier.out_proj.weight[perm])
        head.bias.copy_(model.classifier.out_proj.bias[perm])
    shuffled.config.id2label = {i: schemas.EMOTIONS[p].upper() for i, p in enumerate(perm)}
    np.testing.assert_allclose(score_texts(TEXTS, tok, shuffled), score_texts(TEXTS, tok, model), atol=1e-5)
    assert label_permutation(shuffled).tolist() == [perm.index(i) for i in range(7)]


def test_wrong_labels_rejected(emo):
    tok, model = emo
    other = copy.deepcopy(model)
    other.config.id2label = {i: f"LABEL_{i}" for i in range(7)}
    with pytest.raises(ValueError, match="not the expected"):
        score_texts(["hi"], tok, other)


def test_truncation_at_model_limit(emo):
    tok, model = emo
    long_text = "I really hate this so much. " * 200
    assert len(tok(long_text)["input_ids"]) > 512
    out = score_texts([long_text, "short"], tok, model, max_length=10_000)
    np.testing.assert_allclose(out[0], one_by_one([long_text], tok, model, max_length=512)[0], atol=1e-4)
    # a smaller catalog max_length truncates earlier
    out16 = score_texts([long_text], tok, model, max_length=16)
    np.testing.assert_allclose(out16[0], one_by_one([long_text], tok, model, max_length=16)[0], atol=1e-4)
    assert not np.allclose(out16[0], out[0], atol=1e-3)


def test_missing_text_scored_as_empty(emo):
    tok, model = emo
    out = score_texts([None, "", pd.NA], tok, model)
    np.testing.assert_allclose(out[0], out[1], atol=1e-4)
    np.testing.assert_allclose(out[2], out[1], atol=1e-4)


@pytest.fixture
def catalog(tmp_path, models_dir):
    return load_catalog(profile="tiny", data_root=str(tmp_path / "data"), overrides={"models_dir": str(models_dir)})


def write_sentences(catalog, video_id, texts):
    n = len(texts)
    df = pd.DataFrame({"sentence_idx": np.arange(n, dtype=np.int32), "text": texts,
                       "start_s": np.arange(n, dtype=float), "end_s": np.arange(n, dtype=float) + 0.9,
                       "n_words": np.array([len(t.split()) for t in texts], dtype=np.int32)})
    io.atomic_write_parquet(catalog.artifact("sentences", video_id), schemas.to_table(df, schemas.SENTENCES))


def test_run_sentiment(catalog, emo):
    write_sentences(catalog, "v1", TEXTS)
    assert run_sentiment(catalog, "v1", device="cpu") == {"video_id": "v1", "n_sentences": len(TEXTS)}
    path = catalog.artifact("sentiment", "v1")
    table = pq.read_table(path)
    schemas.validate_table(table, schemas.SENTIMENT, "sentiment")
    df = table.to_pandas()
    logits = df[schemas.LOGIT_COLUMNS].to_numpy()
    probs = df[schemas.PROB_COLUMNS].to_numpy()
    np.testing.assert_allclose(logits, one_by_one(TEXTS, *emo), atol=1e-4)
    np.testing.assert_allclose(probs, softmax(logits), atol=1e-6)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(df["neutral"], df["prob_neutral"])
    assert df["sentence_idx"].tolist() == list(range(len(TEXTS)))
    assert io.parquet_metadata(path)["fingerprint"] == catalog.stage_fingerprint("sentiment")


def test_run_sentiment_empty_and_missing(catalog):
    write_sentences(catalog, "v0", [])
    assert run_sentiment(catalog, "v0", device="cpu")["n_sentences"] == 0
    assert pq.read_table(catalog.artifact("sentiment", "v0")).num_rows == 0
    with pytest.raises(StageError) as e:
        run_sentiment(catalog, "nothing_here", device="cpu")
    assert e.value.stage == "sentiment" and e.value.video_id == "nothing_here"
    assert not io.exists(catalog.artifact("sentiment", "nothing_here"))
