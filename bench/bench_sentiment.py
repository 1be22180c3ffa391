"""Emotion-stage throughput (sentences/s) against a transformers
`pipeline("text-classification", top_k=None)` called once per sentence (the
baseline), measured in the same run on the same model and sentences.

    .venv/bin/python bench/bench_sentiment.py                 # tiny + DistilRoBERTa-size
    .venv/bin/python bench/bench_sentiment.py --sizes tiny --n 2000

Sizes: `tiny` (the tiny profile's 2-layer model) and `distilroberta` (random
weights with DistilRoBERTa's shape: 6 layers, hidden 768, 12 heads). Goal: >= 5x.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import _text_models  # noqa: E402  (bench/ is on sys.path when run as a script)

from emotionclip.core import schemas  # noqa: E402
from emotionclip.zoo import tiny  # noqa: E402
from emotionclip.stages.sentiment import score_texts, softmax  # noqa: E402
from emotionclip.zoo import load_emotion_model  # noqa: E402


def make_sentences(n: int, seed: int = 0) -> list[str]:
    """TV-dialogue-like sentences of 2-30 words (the tiny tokenizer's corpus words)."""
    vocab = " ".join(tiny._CORPUS).split()
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(vocab, size=int(rng.integers(2, 31)))) for _ in range(n)]


def bench(name: str, tok, model, texts: list[str], batch_size: int, rounds: int) -> dict:
    from transformers import pipeline

    pipe = pipeline("text-classification", model=model, tokenizer=tok, top_k=None, device="cpu")

    def baseline():
        return [pipe(t) for t in texts]

    def ours():
        return score_texts(texts, tok, model, batch_size=batch_size)

    # warm up, and check both give the same probabilities
    ref = baseline()[:20]
    got = softmax(ours()[:20])
    for row, scores in zip(got, ref):
        scores = scores[0] if isinstance(scores[0], list) else scores
        want = np.array([{s["label"]: s["score"] for s in scores}[e] for e in schemas.EMOTIONS])
        assert np.allclose(row, want, atol=1e-4), (row, want)
    t_base, t_ours = [], []
    for _ in range(rounds):  # alternate, so load from other processes hits both alike
        t = time.perf_counter(); baseline(); t_base.append(time.perf_counter() - t)
        t = time.perf_counter(); ours(); t_ours.append(time.perf_counter() - t)
    b, o = statistics.median(t_base), statistics.median(t_ours)
    n = len(texts)
    print(f"[{name}] {n} sentences, batch_size={batch_size}, torch threads={torch.get_num_threads()}, rounds={rounds}")
    print(f"  baseline pipeline per sentence: {n / b:9.1f} sentences/s  ({b:.2f} s)")
    print(f"  emotionclip score_texts:        {n / o:9.1f} sentences/s  ({o:.2f} s)")
    print(f"  ratio: {b / o:.1f}x (goal >= 5x)")
    return {"size": name, "baseline_sps": n / b, "ours_sps": n / o, "ratio": b / o}


def main() -> None:
    args = _text_models.parse_args(__doc__, "--n", 1000, "sentences (tiny); a quarter of it for distilroberta", 64)
    tok, tiny_model = load_emotion_model(str(_text_models.models_dir(args) / "tiny" / "emotion"))
    for size in args.sizes:
        if size == "tiny":
            bench("tiny", tok, tiny_model, make_sentences(args.n), args.batch_size, args.rounds)
        else:
            from transformers import RobertaForSequenceClassification

            big = _text_models.distilroberta_sized(tok, RobertaForSequenceClassification, schemas.EMOTIONS)
            bench("distilroberta-size", tok, big, make_sentences(max(args.n // 4, 1)), args.batch_size, args.rounds)


if __name__ == "__main__":
    main()
