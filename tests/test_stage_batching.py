"""Stage-major batches of the two text-model stages: `run_sentiment_many` and
`run_sentences_many` fill model batches across videos and give each video the
output the one-video stage gives it (tiny random-weight models)."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from emotionclip.core import io, schemas
from emotionclip.core.catalog import load_catalog
from emotionclip.core.errors import ModelNotAvailable, StageError
from emotionclip.stages import sentences as sentences_stage
from emotionclip.stages import sentiment as sentiment_stage
from emotionclip.stages.sentences import (
    restore_punctuation,
    restore_punctuation_many,
    run_sentences,
    run_sentences_many,
)
from emotionclip.stages.sentiment import run_sentiment, run_sentiment_many
from emotionclip.zoo import load_emotion_model, load_punctuation_model

VOCAB = ("i you we they what where why how the a to of and but so well okay yes no never "
         "maybe home night love hate scared happy go come talk said would could really just "
         "know think want need supercalifragilistic 😍 日本語 café").split()

# Small batches, so that several batches run and pooled ones mix videos.
SENTIMENT_BATCH = 4
PUNCT_BATCH = 3
CHUNK_WORDS = 20
OVERLAP = 3


def make_words(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [VOCAB[i] for i in rng.integers(0, len(VOCAB), n)]


def make_texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(make_words(int(rng.integers(1, 25)), seed * 100 + i)) for i in range(n)]


def catalog_at(root: Path, models_dir: Path):
    return load_catalog(profile="tiny", data_root=str(root), overrides={
        "models_dir": str(models_dir),
        "stages.sentiment.batch_size": SENTIMENT_BATCH,
        "stages.sentences.batch_size": PUNCT_BATCH,
        "stages.sentences.chunk_words": CHUNK_WORDS,
        "stages.sentences.overlap_words": OVERLAP,
    })


@pytest.fixture
def two_catalogs(tmp_path, models_dir):
    """The same inputs go to both: one for the per-video runs, one for run_many."""
    return catalog_at(tmp_path / "per_video", models_dir), catalog_at(tmp_path / "many", models_dir)


def write_corrupt(catalog, artifact: str, video_id: str) -> None:
    path = Path(catalog.artifact(artifact, video_id))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"PAR1 this is not a parquet file")


@contextlib.contextmanager
def batch_sizes(model):
    """Rows of every forward call of `model` (the cached instance the stage uses)."""
    sizes: list[int] = []
    handle = model.register_forward_hook(
        lambda mod, args, kwargs, out: sizes.append(int(kwargs["input_ids"].shape[0])), with_kwargs=True)
    try:
        yield sizes
    finally:
        handle.remove()


# -- sentiment -----------------------------------------------------------------------

SENTENCE_COUNTS = {"s_three": 3, "s_zero": 0, "s_nine": 9, "s_one": 1, "s_fourteen": 14}
BAD_SENTENCES = ["s_missing", "s_corrupt"]


def write_sentences(catalog, video_id, texts):
    n = len(texts)
    df = pd.DataFrame({"sentence_idx": np.arange(n, dtype=np.int32), "text": texts,
                       "start_s": np.arange(n, dtype=float), "end_s": np.arange(n, dtype=float) + 0.9,
                       "n_words": np.array([len(t.split()) for t in texts], dtype=np.int32)})
    io.atomic_write_parquet(catalog.artifact("sentences", video_id), schemas.to_table(df, schemas.SENTENCES))


def sentiment_inputs(catalog) -> list[str]:
    """Writes the test videos' sentences; returns all the video ids, bad ones included."""
    for seed, (vid, n) in enumerate(SENTENCE_COUNTS.items()):
        write_sentences(catalog, vid, make_texts(n, seed + 1))
    write_corrupt(catalog, "sentences", "s_corrupt")
    ids = list(SENTENCE_COUNTS)
    return ids[:2] + BAD_SENTENCES[:1] + ids[2:] + BAD_SENTENCES[1:]  # bad ones in the middle and at the end


def test_sentiment_many_equals_per_video(two_catalogs):
    per, many = two_catalogs
    ids = sentiment_inputs(per)
    assert sentiment_inputs(many) == ids
    _, model = load_emotion_model(per.model_ref("emotion"), "cpu")

    expected = {}
    with batch_sizes(model) as per_sizes:
        for vid in ids:
            if vid in BAD_SENTENCES:
                with pytest.raises(StageError):
                    run_sentiment(per, vid, device="cpu")
            else:
                expected[vid] = run_sentiment(per, vid, device="cpu")
    with batch_sizes(model) as many_sizes:
        got = run_sentiment_many(many, ids, device="cpu")

    assert list(got) == ids
    for vid in BAD_SENTENCES:
        assert isinstance(got[vid], StageError) and got[vid].video_id == vid and got[vid].stage == "sentiment"
        assert not io.exists(many.artifact("sentiment", vid))
    all_logits = []
    for vid, n in SENTENCE_COUNTS.items():
        assert got[vid] == expected[vid] == {"video_id": vid, "n_sentences": n}
        a, b = (pq.read_table(c.artifact("sentiment", vid)) for c in (per, many))
        schemas.validate_table(b, schemas.SENTIMENT, "sentiment")
        assert a.schema.equals(b.schema, check_metadata=True)  # same columns, types and fingerprint
        a, b = a.to_pandas(), b.to_pandas()
        assert b["sentence_idx"].tolist() == list(range(n))
        cols = schemas.LOGIT_COLUMNS + schemas.PROB_COLUMNS + ["neutral"]
        np.testing.assert_allclose(b[cols].to_numpy(), a[cols].to_numpy(), atol=1e-5, rtol=0)
        all_logits.append(b[schemas.LOGIT_COLUMNS].to_numpy())
    # the scores differ between sentences, so rows mixed up between videos would fail
    all_logits = np.concatenate(all_logits)
    assert np.abs(all_logits - all_logits[0]).max() > 0.1

    # Batches are filled across videos: 27 sentences in 7 calls, not one short batch per video.
    total = sum(SENTENCE_COUNTS.values())
    assert many_sizes == [SENTIMENT_BATCH] * (total // SENTIMENT_BATCH) + [total % SENTIMENT_BATCH]
    assert per_sizes == [min(SENTIMENT_BATCH, n - b) for n in SENTENCE_COUNTS.values()
                         for b in range(0, n, SENTIMENT_BATCH)]
    assert len(many_sizes) < len(per_sizes)


def test_sentiment_many_failed_pool_falls_back_per_video(tmp_path, models_dir, monkeypatch):
    cat = catalog_at(tmp_path, models_dir)
    write_sentences(cat, "good", make_texts(5, 1))
    write_sentences(cat, "poison", ["fine", "BOOM here", "fine too"])
    write_sentences(cat, "also_good", make_texts(2, 2))
    real = sentiment_stage.score_texts

    def score_texts(texts, *args, **kwargs):
        if any("BOOM" in t for t in texts):
            raise RuntimeError("model failed on this text")
        return real(texts, *args, **kwargs)

    monkeypatch.setattr(sentiment_stage, "score_texts", score_texts)
    got = run_sentiment_many(cat, ["good", "poison", "also_good"], device="cpu")
    assert isinstance(got["poison"], RuntimeError)
    assert got["good"]["n_sentences"] == 5 and got["also_good"]["n_sentences"] == 2
    assert not io.exists(cat.artifact("sentiment", "poison"))
    with pytest.raises(RuntimeError, match="failed on this text"):
        run_sentiment(cat, "poison", device="cpu")


def test_sentiment_many_model_unavailable(tmp_path, models_dir, monkeypatch):
    import emotionclip.zoo

    cat = catalog_at(tmp_path, models_dir)
    write_sentences(cat, "a", make_texts(3, 1))
    write_sentences(cat, "empty", [])

    def unavailable(*args, **kwargs):
        raise ModelNotAvailable("no weights here")

    monkeypatch.setattr(emotionclip.zoo, "load_emotion_model", unavailable)
    got = run_sentiment_many(cat, ["a", "empty", "gone"], device="cpu")
    assert isinstance(got["a"], ModelNotAvailable)
    assert got["empty"] == {"video_id": "empty", "n_sentences": 0}  # needs no model, as alone
    assert isinstance(got["gone"], StageError)
    with pytest.raises(ModelNotAvailable):
        run_sentiment(cat, "a", device="cpu")


# -- sentences -----------------------------------------------------------------------

# 0 words, words that clean to nothing, one short chunk, several chunks, many chunks
WORD_COUNTS = {"w_zero": 0, "w_dots": 4, "w_seven": 7, "w_fifty": 50, "w_long": 130}
BAD_WORDS = ["w_missing", "w_corrupt"]


def words_frame(words):
    n = len(words)
    return pd.DataFrame({"word": words, "start_s": np.arange(n) * 0.5, "end_s": np.arange(n) * 0.5 + 0.4,
                         "precision": ["segment"] * n})


def word_lists() -> dict[str, list[str]]:
    out = {vid: make_words(n, seed + 10) for seed, (vid, n) in enumerate(WORD_COUNTS.items())}
    out["w_dots"] = ["...", "?!", ",", "."]
    out["w_fifty"][4] = "Really?!"  # cleaned to "Really"
    return out


def words_inputs(catalog) -> list[str]:
    for vid, words in word_lists().items():
        io.atomic_write_parquet(catalog.artifact("words", vid), schemas.to_table(words_frame(words), schemas.WORDS))
    write_corrupt(catalog, "words", "w_corrupt")
    ids = list(WORD_COUNTS)
    return BAD_WORDS[:1] + ids[:3] + BAD_WORDS[1:] + ids[3:]


def test_restore_punctuation_many_equals_one_by_one(models_dir):
    tok, model = load_punctuation_model(str(models_dir / "tiny" / "punctuation"))
    lists = [make_words(n, n) for n in (1, 7, 0, 50, 130, 23)]
    one = [restore_punctuation(w, tok, model, CHUNK_WORDS, OVERLAP, PUNCT_BATCH) for w in lists]
    with batch_sizes(model) as sizes:
        many = restore_punctuation_many(lists, tok, model, CHUNK_WORDS, OVERLAP, PUNCT_BATCH)
    assert many == one
    assert [len(x) for x in many] == [len(w) for w in lists]
    assert len({lab for labs in many for lab in labs}) > 2  # labels vary: the comparison has power
    assert all(s == PUNCT_BATCH for s in sizes[:-1])  # every batch but the last is full


def test_sentences_many_equals_per_video(two_catalogs):
    per, many = two_catalogs
    ids = words_inputs(per)
    assert words_inputs(many) == ids
    _, model = load_punctuation_model(per.model_ref("punctuation"), "cpu")

    expected = {}
    with batch_sizes(model) as per_sizes:
        for vid in ids:
            if vid in BAD_WORDS:
                with pytest.raises(StageError):
                    run_sentences(per, vid, device="cpu")
            else:
                expected[vid] = run_sentences(per, vid, device="cpu")
    with batch_sizes(model) as many_sizes:
        got = run_sentences_many(many, ids, device="cpu")

    assert list(got) == ids
    for vid in BAD_WORDS:
        assert isinstance(got[vid], StageError) and got[vid].video_id == vid and got[vid].stage == "sentences"
        assert not io.exists(many.artifact("sentences", vid))
    n_sentences = {}
    for vid in WORD_COUNTS:
        assert got[vid] == expected[vid]
        a, b = (pq.read_table(c.artifact("sentences", vid)) for c in (per, many))
        schemas.validate_table(b, schemas.SENTENCES, "sentences")
        assert a.schema.equals(b.schema, check_metadata=True)
        pd.testing.assert_frame_equal(b.to_pandas(), a.to_pandas())  # same splits, same text: exact
        n_sentences[vid] = b.num_rows
    assert got["w_zero"]["n_sentences"] == got["w_dots"]["n_sentences"] == 0
    assert got["w_fifty"]["n_words"] == 50 and got["w_long"]["n_sentences"] > 1

    # Chunks of all the videos share batches: fewer, fuller model calls than video by video.
    assert sum(many_sizes) == sum(per_sizes)
    assert len(many_sizes) == math.ceil(sum(per_sizes) / PUNCT_BATCH) < len(per_sizes)


def test_sentences_many_failed_pool_falls_back_per_video(tmp_path, models_dir, monkeypatch):
    cat = catalog_at(tmp_path, models_dir)
    for vid, n in (("a", 30), ("poison", 13), ("b", 9)):
        io.atomic_write_parquet(cat.artifact("words", vid), schemas.to_table(words_frame(make_words(n, n)),
                                                                             schemas.WORDS))
    real = sentences_stage.predict_chunks

    def predict_chunks(plans, *args, **kwargs):
        if any(p.n_words == 13 for p in plans):
            raise RuntimeError("model failed on this video")
        return real(plans, *args, **kwargs)

    monkeypatch.setattr(sentences_stage, "predict_chunks", predict_chunks)
    got = run_sentences_many(cat, ["a", "poison", "b"], device="cpu")
    assert isinstance(got["poison"], RuntimeError)
    assert got["a"]["n_words"] == 30 and got["b"]["n_words"] == 9
    assert not io.exists(cat.artifact("sentences", "poison"))
    with pytest.raises(RuntimeError, match="failed on this video"):
        run_sentences(cat, "poison", device="cpu")
