"""Sentences stage: restore punctuation over a video's caption words with a
FullStop-style token classifier, then split into timed sentences.

Paper profile: `oliverguhr/fullstop-punctuation-multilang-large` (labels
`0 . , ? - :`). We call the model directly (the `deepmultilingualpunctuation`
wrapper breaks on transformers 5) and improve on the wrapper in two ways:
chunks are batched through the model, and in the overlap between two chunks a
word takes its label from the chunk where it has the most context on both
sides (the wrapper always took the later chunk). `run_sentences_many` pools
the chunks of many videos into the same batches (plan per video -> batched
inference over all the chunks -> label merge per video), so a short video does
not run a short batch of its own.

Words with no text after cleaning are dropped; a video whose captions have no
words gives an empty sentences table (not an error): it simply yields no
clips, and downstream stages accept empty tables.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from emotionclip.core import io, schemas
from emotionclip.core.errors import StageError, pooled_or_each

STAGE = "sentences"

# Reference FullStop wrapper: 230-word chunks, 5 words of overlap, split at . and ?
CHUNK_WORDS = 230
OVERLAP_WORDS = 5
SPLIT_ON = (".", "?")

# The wrapper's preprocessing: the model was trained on text without these marks;
# marks between digits stay ("3.5", "10:30"). Unlike the wrapper we also strip
# them at the end of a word after a digit ("10:30." -> "10:30").
_STRIP = re.compile(r"(?<!\d)[.,;:!?](?!\d)|[.,;:!?]+$")
_NO_CONTEXT_LIMIT = 1 << 30  # a document edge: nothing is missing on that side


def clean_word(word: str) -> str:
    return _STRIP.sub("", word).strip()


def plan_chunks(
    token_counts: Sequence[int], chunk_words: int, overlap_words: int, max_tokens: int
) -> list[tuple[int, int]]:
    """Word ranges [start, end) of at most `chunk_words` words and `max_tokens`
    sub-tokens, consecutive ranges sharing `overlap_words` words."""
    n = len(token_counts)
    if n == 0:
        return []
    cum = np.concatenate([[0], np.cumsum(np.asarray(token_counts, dtype=np.int64))])
    chunks = []
    start = 0
    while True:
        # furthest end whose tokens fit the budget (at least one word per chunk)
        fit = int(np.searchsorted(cum, cum[start] + max_tokens, side="right")) - 1
        end = max(start + 1, min(fit, start + chunk_words, n))
        chunks.append((start, end))
        if end >= n:
            return chunks
        nxt = end - overlap_words
        start = nxt if nxt > start else end


def _context(start: int, end: int, n: int) -> np.ndarray:
    """For each word of chunk [start, end): the context the chunk gives it, the
    smaller of its left and right context (a document edge counts as unlimited)."""
    pos = np.arange(end - start)
    left = pos if start > 0 else np.full_like(pos, _NO_CONTEXT_LIMIT)
    right = (end - start - 1 - pos) if end < n else np.full_like(pos, _NO_CONTEXT_LIMIT)
    return np.minimum(left, right)


def _special_layout(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special token ids the tokenizer puts before and after one sequence
    (e.g. <s> ... </s>), read from the tokenizer rather than assumed."""
    enc = tokenizer(["a"], is_split_into_words=True)
    ids, wids = enc["input_ids"], enc.word_ids(0)
    pos = [i for i, w in enumerate(wids) if w is not None]
    return list(ids[:pos[0]]), list(ids[pos[-1] + 1:])


@dataclass(frozen=True)
class ModelLayout:
    """What every chunk of one model shares: the special tokens around a sequence,
    the sub-token budget left between them, the labels and the padding id."""

    prefix: list[int]
    suffix: list[int]
    budget: int
    id2label: dict[int, str]
    no_mark: int
    pad_id: int


def model_layout(tokenizer: Any, model: Any) -> ModelLayout:
    """Read once per model, shared by all the chunks of all the videos."""
    from emotionclip.zoo import model_max_tokens

    prefix, suffix = _special_layout(tokenizer)
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    return ModelLayout(prefix, suffix, model_max_tokens(tokenizer, model) - len(prefix) - len(suffix), id2label,
                   next((i for i, lab in id2label.items() if lab == "0"), 0),
                   tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)


@dataclass(frozen=True)
class ChunkPlan:
    """One word stream tokenized once and cut into overlapping chunks (plan_chunks)."""

    n_words: int
    ids: np.ndarray  # sub-token ids of the whole stream
    counts: np.ndarray  # sub-tokens per word
    cum: np.ndarray  # tokens of word w: ids[cum[w]:cum[w + 1]]
    chunks: list[tuple[int, int]]

    def span(self, c: int, budget: int) -> tuple[int, int]:
        """Token range of chunk c; a single word longer than the budget is cut (its
        label then comes from its last kept token)."""
        ts = int(self.cum[self.chunks[c][0]])
        return ts, min(int(self.cum[self.chunks[c][1]]), ts + budget)


def plan_words(
    words: list[str], tokenizer: Any, layout: ModelLayout, chunk_words: int = CHUNK_WORDS,
    overlap_words: int = OVERLAP_WORDS,
) -> ChunkPlan:
    """Tokenize one video's words and cut them into chunks of at most `chunk_words`
    words and the model's sub-token budget (no model call)."""
    n = len(words)
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return ChunkPlan(0, empty, empty, np.zeros(1, dtype=np.int64), [])
    if overlap_words * 2 >= chunk_words:
        raise ValueError("overlap_words must be less than half of chunk_words")
    # Tokenize the whole word stream once. Each word is pre-tokenized on its own
    # (is_split_into_words), so a chunk's tokens are a slice of these: chunks are
    # cut from them instead of re-tokenizing every chunk.
    enc = tokenizer(words, is_split_into_words=True, add_special_tokens=False, verbose=False)
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    wid = np.asarray([-1 if w is None else w for w in enc.word_ids(0)], dtype=np.int64)
    counts = np.bincount(wid[wid >= 0], minlength=n)
    cum = np.concatenate([[0], np.cumsum(counts)])
    return ChunkPlan(n, ids, counts, cum, plan_chunks(counts, chunk_words, overlap_words, layout.budget))


def predict_chunks(
    plans: Sequence[ChunkPlan], model: Any, layout: ModelLayout, batch_size: int = 8
) -> list[list[np.ndarray]]:
    """Model label id of each word that has sub-tokens (taken at its LAST sub-token),
    per plan and chunk. The chunks of all the plans are pooled, sorted by length and
    batched together, so short streams fill one batch instead of one each."""
    import torch

    from emotionclip.zoo import model_device

    items = [(p, c) for p, plan in enumerate(plans) for c in range(len(plan.chunks))]
    spans = {it: plans[it[0]].span(it[1], layout.budget) for it in items}
    out: list[list[np.ndarray]] = [[np.zeros(0, dtype=np.int64)] * len(plan.chunks) for plan in plans]
    # Longest first, so each batch pads to similar lengths.
    items.sort(key=lambda it: -(spans[it][1] - spans[it][0]))
    device = model_device(model)
    prefix, suffix = np.asarray(layout.prefix, dtype=np.int64), np.asarray(layout.suffix, dtype=np.int64)
    for b0 in range(0, len(items), batch_size):
        batch = items[b0:b0 + batch_size]
        width = len(prefix) + len(suffix) + max(spans[it][1] - spans[it][0] for it in batch)
        input_ids = np.full((len(batch), width), layout.pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for r, (p, c) in enumerate(batch):  # right padding, as the tokenizer pads
            ts, te = spans[(p, c)]
            row = np.concatenate([prefix, plans[p].ids[ts:te], suffix])
            input_ids[r, :len(row)] = row
            mask[r, :len(row)] = 1
        with torch.inference_mode():
            pred = model(input_ids=torch.from_numpy(input_ids).to(device),
                         attention_mask=torch.from_numpy(mask).to(device)).logits.argmax(-1).cpu().numpy()
        for r, (p, c) in enumerate(batch):
            plan, (s, e), (ts, te) = plans[p], plans[p].chunks[c], spans[(p, c)]
            local = np.flatnonzero(plan.counts[s:e] > 0)
            # row position of each word's LAST sub-token
            pos = len(prefix) + np.minimum(plan.cum[s + local + 1], te) - 1 - ts
            out[p][c] = pred[r, pos]
    return out


def merge_labels(plan: ChunkPlan, preds: Sequence[np.ndarray], layout: ModelLayout) -> list[str]:
    """One label per word from its chunks' predictions: in an overlap, the chunk
    that gives the word the most context wins; on a tie, the earlier chunk."""
    n, chunks = plan.n_words, plan.chunks
    label_ids = np.full(n, layout.no_mark, dtype=np.int64)  # a word with no sub-token gets no mark
    best = np.full(n, -1, dtype=np.int64)
    for c, (s, e) in enumerate(chunks):
        local = np.flatnonzero(plan.counts[s:e] > 0)
        score = _context(s, e, n)[local] * (len(chunks) + 1) + (len(chunks) - c)
        glob = s + local
        better = score > best[glob]
        best[glob[better]] = score[better]
        label_ids[glob[better]] = preds[c][better]
    return [layout.id2label[int(i)] for i in label_ids]


def restore_punctuation_many(
    word_lists: Sequence[list[str]],
    tokenizer: Any,
    model: Any,
    chunk_words: int = CHUNK_WORDS,
    overlap_words: int = OVERLAP_WORDS,
    batch_size: int = 8,
) -> list[list[str]]:
    """restore_punctuation for several word streams, their chunks batched together."""
    layout = model_layout(tokenizer, model)
    plans = [plan_words(w, tokenizer, layout, chunk_words, overlap_words) for w in word_lists]
    preds = predict_chunks(plans, model, layout, batch_size)
    return [merge_labels(plan, pr, layout) for plan, pr in zip(plans, preds)]


def restore_punctuation(
    words: list[str],
    tokenizer: Any,
    model: Any,
    chunk_words: int = CHUNK_WORDS,
    overlap_words: int = OVERLAP_WORDS,
    batch_size: int = 8,
) -> list[str]:
    """The punctuation label (model's id2label, e.g. "0" . , ? - :) after each word.

    Words are read in overlapping chunks (a word takes the label of its LAST
    sub-token); chunks are sorted by length and batched through the model.
    """
    return restore_punctuation_many([words], tokenizer, model, chunk_words, overlap_words, batch_size)[0]


def punctuated_text(words: Sequence[str], labels: Sequence[str]) -> str:
    """Join words with their restored marks, as the reference wrapper does."""
    return " ".join(w + (lab if lab != "0" else "") for w, lab in zip(words, labels))


def split_sentences(
    words_df: pd.DataFrame, labels: Sequence[str], split_on: Sequence[str] = SPLIT_ON
) -> pd.DataFrame:
    """One row per sentence (schemas.SENTENCES): a sentence ends at a word whose
    label is in `split_on`; a trailing run without a final mark is a sentence too.
    Times: start of the first word, end of the last."""
    if len(words_df) != len(labels):
        raise ValueError(f"{len(words_df)} words but {len(labels)} labels")
    words = words_df["word"].astype(str).tolist()
    starts = words_df["start_s"].to_numpy(dtype=np.float64)
    ends = words_df["end_s"].to_numpy(dtype=np.float64)
    stops = set(split_on)
    rows = []
    first = 0
    for i, lab in enumerate(labels):
        if lab in stops or i == len(labels) - 1:
            rows.append({
                "sentence_idx": len(rows),
                "text": punctuated_text(words[first:i + 1], labels[first:i + 1]),
                "start_s": float(starts[first]),
                "end_s": float(ends[i]),
                "n_words": i + 1 - first,
            })
            first = i + 1
    df = pd.DataFrame(rows, columns=[f.name for f in schemas.SENTENCES])
    return df.astype({"sentence_idx": "int32", "n_words": "int32", "start_s": "float64",
                      "end_s": "float64"})


def _read_words(catalog: Any, video_id: str) -> pd.DataFrame:
    path = catalog.artifact("words", video_id)
    if not io.exists(path):
        raise StageError(STAGE, video_id, f"words artifact not found: {path} (run the words stage first)")
    try:
        df = io.read_parquet(path)
    except Exception as e:  # a corrupt file is this video's problem, not the run's
        raise StageError(STAGE, video_id, f"cannot read words {path}: {e}") from e
    missing = [c for c in ("word", "start_s", "end_s") if c not in df.columns]
    if missing:
        raise StageError(STAGE, video_id, f"words table {path} lacks columns {missing}")
    return df


def _clean_words(catalog: Any, video_id: str) -> pd.DataFrame:
    """The video's words with their text cleaned; words left empty are dropped."""
    df = _read_words(catalog, video_id)
    df = df.assign(word=df["word"].fillna("").astype(str).map(clean_word))
    if df[["start_s", "end_s"]].isna().any().any():
        raise StageError(STAGE, video_id, "words table has words without times")
    return df[df["word"] != ""].reset_index(drop=True)


def run_sentences_many(
    catalog: Any, video_ids: Sequence[str], device: str | None = None
) -> dict[str, dict | BaseException]:
    """Words -> punctuated, timed sentences for several videos.

    Each video's words are tokenized and cut into chunks on their own; the chunks of
    all the videos go through the model in shared batches; labels are merged and
    sentences split per video and written as the one-video stage writes them.
    Returns per video the stage summary, or the exception that video raised: one bad
    video does not fail the others.
    """
    from emotionclip.zoo import default_device, load_punctuation_model

    params = catalog.stages.sentences
    results: dict[str, dict | BaseException] = {}
    frames: dict[str, pd.DataFrame] = {}
    for vid in dict.fromkeys(video_ids):  # order kept, duplicates run once
        try:
            frames[vid] = _clean_words(catalog, vid)
        except Exception as e:
            results[vid] = e
    labels: dict[str, list[str] | BaseException] = {vid: [] for vid, df in frames.items() if not len(df)}
    todo = [vid for vid, df in frames.items() if len(df)]
    if todo:  # a batch of videos without words needs no model
        try:
            tok, model = load_punctuation_model(catalog.model_ref("punctuation"), device or default_device())
            layout = model_layout(tok, model)
        except Exception as e:  # the model itself failed: every video that needs it fails
            labels.update((vid, e) for vid in todo)
            todo = []
        plans: dict[str, ChunkPlan] = {}
        for vid in todo:
            try:
                plans[vid] = plan_words(frames[vid]["word"].tolist(), tok, layout, params.chunk_words,
                                        params.overlap_words)
            except Exception as e:
                labels[vid] = e
        if plans:
            try:
                preds = pooled_or_each(lambda ps: predict_chunks(ps, model, layout, params.batch_size),
                                       list(plans.values()))
            except Exception as e:
                preds = [e] * len(plans)
            for (vid, plan), pr in zip(plans.items(), preds):
                try:
                    labels[vid] = pr if isinstance(pr, BaseException) else merge_labels(plan, pr, layout)
                except Exception as e:
                    labels[vid] = e
    for vid, df in frames.items():
        if isinstance(labels[vid], BaseException):
            results[vid] = labels[vid]
            continue
        try:
            sentences = split_sentences(df, labels[vid], split_on=tuple(params.split_on))
            io.atomic_write_parquet(catalog.artifact("sentences", vid),
                                    schemas.to_table(sentences, schemas.SENTENCES),
                                    metadata={"fingerprint": catalog.stage_fingerprint(STAGE)})
            results[vid] = {"video_id": vid, "n_words": int(len(df)), "n_sentences": int(len(sentences))}
        except Exception as e:
            results[vid] = e
    return {vid: results[vid] for vid in dict.fromkeys(video_ids)}


def run_sentences(catalog: Any, video_id: str, device: str | None = None) -> dict:
    """Words -> punctuated, timed sentences (per-video stage contract): the one-video
    case of run_sentences_many, its error raised."""
    result = run_sentences_many(catalog, [video_id], device)[video_id]
    if isinstance(result, BaseException):
        raise result
    return result
