"""Sentiment stage: 7-class emotion scores for every sentence.

Paper profile: `j-hartmann/emotion-english-distilroberta-base` (neutral is
index 4). The raw logits are kept (the sentiment-guided loss needs them), with
the softmax probabilities and `neutral`. Texts are tokenized once, sorted by
length and batched (little padding), truncated at the model's limit, and the
scores are returned in the input order. Any text is scored: empty strings,
emoji and non-English characters included (byte-level BPE has no unknowns).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from emotionclip.core import io, schemas
from emotionclip.core.errors import StageError

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
    df = pd.DataFrame({"sentence_idx": np.asarray(sentence_idx, dtype=np.int32)})
    for j, e in enumerate(schemas.EMOTIONS):
        df[f"logit_{e}"] = logits[:, j].astype(np.float32)
    for j, e in enumerate(schemas.EMOTIONS):
        df[f"prob_{e}"] = probs[:, j].astype(np.float32)
    df["neutral"] = probs[:, schemas.NEUTRAL_INDEX].astype(np.float32)
    return df


def run_sentiment(catalog: Any, video_id: str, device: str | None = None) -> dict:
    """Sentences -> per-sentence emotion logits and probabilities (per-video stage contract)."""
    from emotionclip.zoo import default_device, load_emotion_model

    params = catalog.stages.sentiment
    path = catalog.artifact("sentences", video_id)
    if not io.exists(path):
        raise StageError(STAGE, video_id, f"sentences artifact not found: {path} (run the sentences stage first)")
    try:
        sentences = io.read_parquet(path, columns=["sentence_idx", "text"])
    except Exception as e:
        raise StageError(STAGE, video_id, f"cannot read sentences {path}: {e}") from e
    if len(sentences):
        tok, model = load_emotion_model(catalog.model_ref("emotion"), device or default_device())
        logits = score_texts(sentences["text"].tolist(), tok, model, batch_size=params.batch_size,
                             max_length=params.max_length)
    else:
        logits = np.zeros((0, len(schemas.EMOTIONS)), dtype=np.float32)
    df = sentiment_table(sentences["sentence_idx"].to_numpy(), logits)
    io.atomic_write_parquet(catalog.artifact("sentiment", video_id), schemas.to_table(df, schemas.SENTIMENT),
                            metadata={"fingerprint": catalog.stage_fingerprint(STAGE)})
    return {"video_id": video_id, "n_sentences": int(len(df))}
