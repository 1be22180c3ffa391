"""Sentiment stage: 7-class emotion scores for every sentence.

Paper profile: `j-hartmann/emotion-english-distilroberta-base` (neutral is
index 4). The raw logits are kept (the sentiment-guided loss needs them), with
the softmax probabilities and `neutral`. Texts are tokenized once, sorted by
length and batched (little padding), truncated at the model's limit, and the
scores are returned in the input order. Any text is scored: empty strings,
emoji and non-English characters included (byte-level BPE has no unknowns).
`run_sentiment_many` scores the sentences of many videos in one pool, so a video
with a few sentences does not run a short batch of its own.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from emotionclip.core import io, schemas
from emotionclip.core.errors import StageError, pooled_or_each

STAGE = "sentiment"
BATCH_SIZE = 64
MAX_LENGTH = 512  # DistilRoBERTa's position limit


def label_permutation(model: Any) -> np.ndarray:
    """Indices `p` such that `logits[:, p]` is in schemas.EMOTIONS order, read
    from the model's id2label; ValueError if the model's labels differ."""
    id2label = {int(k): str(v).strip().lower() for k, v in model.config.id2label.items()}
    label2id = {v: k for k, v in id2label.items()}
    if sorted(label2id) != sorted(schemas.EMOTIONS) or len(id2label) != len(schemas.EMOTIONS):
        raise ValueError(
            f"emotion model labels {[id2label[i] for i in sorted(id2label)]} are not the expected "
            f"{list(schemas.EMOTIONS)}"
        )
    return np.array([label2id[e] for e in schemas.EMOTIONS], dtype=np.int64)


def score_texts(
    texts: Sequence[str | None],
    tokenizer: Any,
    model: Any,
    batch_size: int = BATCH_SIZE,
    max_length: int = MAX_LENGTH,
) -> np.ndarray:
    """Raw logits [N, 7] in schemas.EMOTIONS order, rows in the order of `texts`."""
    import torch

    from emotionclip.zoo import model_device, model_max_tokens

    perm = label_permutation(model)
    n = len(texts)
    out = np.zeros((n, len(schemas.EMOTIONS)), dtype=np.float32)
    if n == 0:
        return out
    limit = min(int(max_length), model_max_tokens(tokenizer, model))
    clean = [t if isinstance(t, str) else ("" if t is None or pd.isna(t) else str(t)) for t in texts]
    ids = tokenizer(clean, truncation=True, max_length=limit)["input_ids"]
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=n)
    order = np.argsort(-lengths, kind="stable")  # longest first: padding is per batch
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = model_device(model)
    for b0 in range(0, n, batch_size):
        idx = order[b0:b0 + batch_size]
        width = int(lengths[idx].max())
        input_ids = np.full((len(idx), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(idx), width), dtype=np.int64)
        for r, i in enumerate(idx):  # right padding, as the tokenizer itself pads
            input_ids[r, :lengths[i]] = ids[i]
            mask[r, :lengths[i]] = 1
        with torch.inference_mode():
            logits = model(input_ids=torch.from_numpy(input_ids).to(device),
                           attention_mask=torch.from_numpy(mask).to(device)).logits
        out[idx] = logits.float().cpu().numpy()
    return out[:, perm]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def sentiment_table(sentence_idx: Sequence[int], logits: np.ndarray) -> pd.DataFrame:
    """The SENTIMENT columns from raw logits in EMOTIONS order."""
    probs = softmax(logits) if len(logits) else np.zeros_like(logits, dtype=np.float64)
    # built from one dict: inserting 15 columns one by one cost more than a small model batch
    cols: dict[str, np.ndarray] = {"sentence_idx": np.asarray(sentence_idx, dtype=np.int32)}
    cols.update((f"logit_{e}", logits[:, j].astype(np.float32)) for j, e in enumerate(schemas.EMOTIONS))
    cols.update((f"prob_{e}", probs[:, j].astype(np.float32)) for j, e in enumerate(schemas.EMOTIONS))
    cols["neutral"] = probs[:, schemas.NEUTRAL_INDEX].astype(np.float32)
    return pd.DataFrame(cols)


def _read_sentences(catalog: Any, video_id: str) -> pd.DataFrame:
    path = catalog.artifact("sentences", video_id)
    if not io.exists(path):
        raise StageError(STAGE, video_id, f"sentences artifact not found: {path} (run the sentences stage first)")
    try:
        return io.read_parquet(path, columns=["sentence_idx", "text"])
    except Exception as e:  # a corrupt file is this video's problem, not the batch's
        raise StageError(STAGE, video_id, f"cannot read sentences {path}: {e}") from e


def _score_videos(texts: list[list[str]], tok: Any, model: Any, batch_size: int, max_length: int) -> list[np.ndarray]:
    """Logits of every video's texts from one score_texts call, split back per video."""
    logits = score_texts([t for ts in texts for t in ts], tok, model, batch_size=batch_size, max_length=max_length)
    return np.split(logits, np.cumsum([len(ts) for ts in texts])[:-1])


def run_sentiment_many(
    catalog: Any, video_ids: Sequence[str], device: str | None = None
) -> dict[str, dict | BaseException]:
    """Sentences -> per-sentence emotion logits and probabilities for several videos.

    All the videos' sentences are scored together (one model, batches filled across
    videos, sorted by length by score_texts), then each video's table is written as
    the one-video stage writes it. Returns per video the stage summary, or the
    exception that video raised: one bad video does not fail the others.
    """
    from emotionclip.zoo import default_device, load_emotion_model

    params = catalog.stages.sentiment
    results: dict[str, dict | BaseException] = {}
    frames: dict[str, pd.DataFrame] = {}
    for vid in dict.fromkeys(video_ids):  # order kept, duplicates run once
        try:
            frames[vid] = _read_sentences(catalog, vid)
        except Exception as e:
            results[vid] = e
    empty = np.zeros((0, len(schemas.EMOTIONS)), dtype=np.float32)
    logits: dict[str, np.ndarray | BaseException] = {vid: empty for vid, df in frames.items() if not len(df)}
    scored = [vid for vid, df in frames.items() if len(df)]
    if scored:  # a batch of empty videos needs no model
        try:
            tok, model = load_emotion_model(catalog.model_ref("emotion"), device or default_device())
            per_video = pooled_or_each(
                lambda tss: _score_videos(tss, tok, model, params.batch_size, params.max_length),
                [frames[v]["text"].tolist() for v in scored])
        except Exception as e:  # the model itself failed: every video that needs it fails
            per_video = [e] * len(scored)
        logits.update(zip(scored, per_video))
    for vid, df in frames.items():
        if isinstance(logits[vid], BaseException):
            results[vid] = logits[vid]
            continue
        try:
            table = sentiment_table(df["sentence_idx"].to_numpy(), logits[vid])
            io.atomic_write_parquet(catalog.artifact("sentiment", vid), schemas.to_table(table, schemas.SENTIMENT),
                                    metadata={"fingerprint": catalog.stage_fingerprint(STAGE)})
            results[vid] = {"video_id": vid, "n_sentences": int(len(table))}
        except Exception as e:
            results[vid] = e
    return {vid: results[vid] for vid in dict.fromkeys(video_ids)}


def run_sentiment(catalog: Any, video_id: str, device: str | None = None) -> dict:
    """Sentences -> per-sentence emotion logits and probabilities (per-video stage
    contract): the one-video case of run_sentiment_many, its error raised."""
    result = run_sentiment_many(catalog, [video_id], device)[video_id]
    if isinstance(result, BaseException):
        raise result
    return result
