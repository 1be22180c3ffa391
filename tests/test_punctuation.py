"""Sentences stage with the real tiny token classifier (random weights)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from emotionclip.core import io, schemas
from emotionclip.core.catalog import load_catalog
from emotionclip.core.errors import StageError
from emotionclip.stages.sentences import (
    clean_word,
    plan_chunks,
    restore_punctuation,
    run_sentences,
    split_sentences,
)
from emotionclip.zoo import load_punctuation_model

VOCAB = ("i you we they what where why how the a to of and but so well okay yes no never "
         "maybe home night love hate scared happy go come talk said would could really just "
         "know think want need supercalifragilistic 😍 日本語 café").split()


def make_words(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [VOCAB[i] for i in rng.integers(0, len(VOCAB), n)]


@pytest.fixture(scope="module")
def punct(models_dir):
    return load_punctuation_model(str(models_dir / "tiny" / "punctuation"))


def direct_labels(words, tok, model):
    """Label of each word = argmax at its last sub-token, one unbatched model call."""
    enc = tok(words, is_split_into_words=True, return_tensors="pt")
    with torch.no_grad():
        pred = model(**enc).logits[0].argmax(-1).numpy()
    last = {}
    for t, w in enumerate(enc.word_ids(0)):
        if w is not None:
            last[w] = t
    return [model.config.id2label[int(pred[last[i]])] for i in range(len(words))]


# -- chunk planning ----------------------------------------------------------

def test_plan_chunks_words_and_overlap():
    chunks = plan_chunks([1] * 100, chunk_words=30, overlap_words=4, max_tokens=1000)
    assert chunks[0] == (0, 30)
    assert chunks[-1][1] == 100
    for (s0, e0), (s1, e1) in zip(chunks, chunks[1:]):
        assert e0 - s1 == 4  # exactly the overlap
        assert e1 - s1 <= 30
    assert plan_chunks([1] * 30, 30, 4, 1000) == [(0, 30)]
    assert plan_chunks([], 30, 4, 1000) == []


def test_plan_chunks_token_budget():
    counts = [3] * 50
    chunks = plan_chunks(counts, chunk_words=40, overlap_words=2, max_tokens=31)
    assert all(sum(counts[s:e]) <= 31 for s, e in chunks)
    assert max(e - s for s, e in chunks) == 10
    covered = set().union(*(range(s, e) for s, e in chunks))
    assert covered == set(range(50))
    # a single word over the budget still gets its own chunk (truncated later)
    assert plan_chunks([1, 500, 1], 10, 0, 100) == [(0, 1), (1, 2), (2, 3)]


# -- alignment -----------------------------------------------------------------

def test_single_chunk_matches_direct_model_call(punct):
    tok, model = punct
    words = make_words(60, seed=1)
    assert any(len(tok([[w]], is_split_into_words=True, add_special_tokens=False)["input_ids"][0]) > 2
               for w in words)  # multi-sub-token words are present
    labels = restore_punctuation(words, tok, model, chunk_words=230, overlap_words=5)
    expected = direct_labels(words, tok, model)
    assert labels == expected
    assert len(set(labels)) > 2  # the test has power: labels vary by word


@pytest.mark.parametrize("overlap", [4, 5])
def test_overlap_takes_label_from_chunk_with_most_context(punct, overlap):
    tok, model = punct
    words = make_words(70, seed=2)
    chunk = 24
    labels = restore_punctuation(words, tok, model, chunk_words=chunk, overlap_words=overlap, batch_size=3)
    chunks = plan_chunks([1] * len(words), chunk, overlap, 10_000)
    assert len(chunks) >= 3
    per_chunk = [direct_labels(words[s:e], tok, model) for s, e in chunks]
    expected = {}
    for c, (s, e) in enumerate(chunks):
        for i in range(s, e):
            expected.setdefault(i, per_chunk[c][i - s])  # earlier chunk first ...
        if c > 0:
            # ... but in the overlap with the previous chunk, the later half of the
            # overlap has more context here (ties stay with the earlier chunk).
            keep_prev = (overlap + 1) // 2
            for i in range(s + keep_prev, s + overlap):
                expected[i] = per_chunk[c][i - s]
    assert labels == [expected[i] for i in range(len(words))]
    # The overlap words do differ between chunks somewhere, so the choice matters.
    differs = any(per_chunk[c][j] != per_chunk[c + 1][j - (chunks[c + 1][0] - chunks[c][0])]
                  for c in range(len(chunks) - 1)
                  for j in range(chunks[c + 1][0] - chunks[c][0], chunks[c][1] - chunks[c][0]))
    assert differs


def test_batch_size_does_not_change_labels(punct):
    tok, model = punct
    words = make_words(150, seed=3)
    a = restore_punctuation(words, tok, model, chunk_words=20, overlap_words=3, batch_size=1)
    b = restore_punctuation(words, tok, model, chunk_words=20, overlap_words=3, batch_size=16)
    assert a == b


def test_chunks_longer_than_model_limit_are_split(punct):
    tok, model = punct
    words = ["supercalifragilistic"] * 300  # many sub-tokens each: 230 words exceed 512 tokens
    labels = restore_punctuation(words, tok, model, chunk_words=230, overlap_words=5)
    assert len(labels) == 300


def test_empty_words(punct):
    assert restore_punctuation([], *punct) == []


# -- sentences -------------------------------------------------------------------

def words_frame(words):
    n = len(words)
    return pd.DataFrame({"word": words, "start_s": np.arange(n) * 0.5, "end_s": np.arange(n) * 0.5 + 0.4,
                         "precision": ["segment"] * n})


def test_split_sentences_text_and_times():
    df = words_frame(["hi", "there", "how", "are", "you", "fine", "thanks", "and", "you"])
    labels = ["0", ".", ",", "0", "?", ",", "-", "0", "0"]
    out = split_sentences(df, labels)
    assert out["text"].tolist() == ["hi there.", "how, are you?", "fine, thanks- and you"]
    assert out["sentence_idx"].tolist() == [0, 1, 2]
    assert out["n_words"].tolist() == [2, 3, 4]
    assert out["start_s"].tolist() == [0.0, 1.0, 2.5]
    assert out["end_s"].tolist() == pytest.approx([0.9, 2.4, 4.4])
    schemas.validate_table(schemas.to_table(out, schemas.SENTENCES), schemas.SENTENCES, "sentences")


def test_split_sentences_custom_split_and_empty():
    df = words_frame(["a", "b", "c"])
    assert split_sentences(df, ["!", "0", "."], split_on=(".",))["n_words"].tolist() == [3]
    empty = split_sentences(words_frame([]), [])
    assert len(empty) == 0 and list(empty.columns) == [f.name for f in schemas.SENTENCES]
    with pytest.raises(ValueError):
        split_sentences(df, ["0"])


def test_clean_word():
    assert clean_word("Hello,") == "Hello"
    assert clean_word("3.5") == "3.5"
    assert clean_word("10:30.") == "10:30"
    assert clean_word("...") == ""


# -- the stage ---------------------------------------------------------------------

@pytest.fixture
def catalog(tmp_path, models_dir):
    return load_catalog(profile="tiny", data_root=str(tmp_path / "data"),
                        overrides={"models_dir": str(models_dir), "stages.sentences.chunk_words": 40})


def test_run_sentences(catalog, punct):
    words = make_words(120, seed=4)
    words[5] = "Really?!"
    words[6] = "..."  # nothing left after cleaning: dropped
    df = words_frame(words)
    io.atomic_write_parquet(catalog.artifact("words", "vid_1"), schemas.to_table(df, schemas.WORDS))
    summary = run_sentences(catalog, "vid_1", device="cpu")
    path = catalog.artifact("sentences", "vid_1")
    table = pq.read_table(path)
    schemas.validate_table(table, schemas.SENTENCES, "sentences")
    out = table.to_pandas()
    assert summary == {"video_id": "vid_1", "n_words": 119, "n_sentences": len(out)}
    assert out["n_words"].sum() == 119
    assert (out["end_s"] >= out["start_s"]).all()
    assert out["start_s"].is_monotonic_increasing
    assert "Really" in " ".join(out["text"]) and "Really?!" not in " ".join(out["text"])
    assert io.parquet_metadata(path)["fingerprint"] == catalog.stage_fingerprint("sentences")
    # the labels are the model's: same as calling restore_punctuation directly
    kept = [clean_word(w) for w in words if clean_word(w)]
    labels = restore_punctuation(kept, *punct, chunk_words=40, overlap_words=5)
    assert out["text"].tolist() == split_sentences(words_frame(kept), labels)["text"].tolist()


def test_run_sentences_no_words(catalog):
    io.atomic_write_parquet(catalog.artifact("words", "empty"), schemas.to_table(words_frame([]), schemas.WORDS))
    assert run_sentences(catalog, "empty", device="cpu")["n_sentences"] == 0
    out = pq.read_table(catalog.artifact("sentences", "empty"))
    assert out.num_rows == 0
    schemas.validate_table(out, schemas.SENTENCES, "sentences")


def test_run_sentences_missing_words(catalog):
    with pytest.raises(StageError) as e:
        run_sentences(catalog, "ghost", device="cpu")
    assert e.value.stage == "sentences" and e.value.video_id == "ghost"
    assert not io.exists(catalog.artifact("sentences", "ghost"))


def test_single_word_over_model_limit(punct):
    tok, model = punct
    words = ["hello", "ab" * 2000, "there", "friend"]  # one word alone exceeds 512 tokens
    labels = restore_punctuation(words, tok, model, chunk_words=230, overlap_words=5)
    assert len(labels) == 4 and set(labels) <= set(model.config.id2label.values())
