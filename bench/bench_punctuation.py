"""Punctuation-stage throughput (words/s): our batched chunks against
chunk-by-chunk inference, measured in the same run on the same model and words.

Baselines:
- `reference`: the `deepmultilingualpunctuation` 1.0.1 algorithm (one
  token-classification `pipeline` call per 230-word chunk, character-offset
  alignment), ported to transformers 5 (the wrapper itself no longer runs).
- `unbatched`: our own code with batch_size=1 (isolates the batching gain).

    .venv/bin/python bench/bench_punctuation.py                 # tiny + DistilRoBERTa-size
    .venv/bin/python bench/bench_punctuation.py --sizes tiny --words 20000

Sizes: `tiny` (the tiny profile's 2-layer model) and `distilroberta` (random
weights, 6 layers, hidden 768; the paper's XLM-R large is ~6x that per token
and too slow for a 2-core CPU). Goal: >= 3x against chunk-by-chunk.
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
from emotionclip.stages.sentences import restore_punctuation  # noqa: E402
from emotionclip.zoo import load_punctuation_model  # noqa: E402


def make_words(n: int, seed: int = 0) -> list[str]:
    vocab = [w.strip(".,?!:") for w in " ".join(tiny._CORPUS).split()]
    rng = np.random.default_rng(seed)
    return list(rng.choice(vocab, size=n))


def reference_predict(words: list[str], pipe, chunk_size: int = 230, overlap: int = 5) -> list[str]:
    """deepmultilingualpunctuation 1.0.1 `PunctuationModel.predict`, minus its
    transformers-4-only pipeline arguments."""
    if len(words) <= chunk_size:
        overlap = 0
    batches = [words[i:i + chunk_size] for i in range(0, len(words), chunk_size - overlap)]
    if len(batches[-1]) <= overlap:
        batches.pop()
    labels = []
    for bi, batch in enumerate(batches):
        ov = 0 if bi == len(batches) - 1 else overlap  # the last chunk is used completely
        text = " ".join(batch)
        result = pipe(text)
        char_index = 0
        result_index = 0
        for word in batch[:len(batch) - ov]:
            char_index += len(word) + 1
            label = "0"
            while result_index < len(result) and char_index > result[result_index]["end"]:
                label = result[result_index]["entity"]
                result_index += 1
            labels.append(label)
    return labels


def bench(name: str, tok, model, words: list[str], batch_size: int, rounds: int) -> None:
    from transformers import pipeline

    pipe = pipeline("token-classification", model=model, tokenizer=tok, aggregation_strategy="none", device="cpu")
    runs = {
        "reference (pipeline per chunk)": lambda: reference_predict(words, pipe),
        "unbatched (ours, batch_size=1)": lambda: restore_punctuation(words, tok, model, batch_size=1),
        f"emotionclip (batch_size={batch_size})": lambda: restore_punctuation(words, tok, model, batch_size=batch_size),
    }
    out = {k: f() for k, f in runs.items()}  # warm-up
    ours_labels = out[f"emotionclip (batch_size={batch_size})"]
    agree = np.mean([a == b for a, b in zip(out["reference (pipeline per chunk)"], ours_labels)])
    times = {k: [] for k in runs}
    for _ in range(rounds):  # interleaved, so load from other processes hits all alike
        for k, f in runs.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    ours = med[f"emotionclip (batch_size={batch_size})"]
    n = len(words)
    print(f"[{name}] {n} words, torch threads={torch.get_num_threads()}, rounds={rounds}; "
          f"labels agree with reference on {agree:.1%} of words (overlap policy differs)")
    for k, t in med.items():
        print(f"  {k:34s} {n / t:10.1f} words/s  ({t:.2f} s)")
    for k in list(runs)[:2]:
        print(f"  ratio vs {k}: {med[k] / ours:.2f}x (goal >= 3x)")


def main() -> None:
    args = _text_models.parse_args(__doc__, "--words", 10000, "words (tiny); a fifth for distilroberta", 8)
    tok, tiny_model = load_punctuation_model(str(_text_models.models_dir(args) / "tiny" / "punctuation"))
    for size in args.sizes:
        if size == "tiny":
            bench("tiny", tok, tiny_model, make_words(args.words), args.batch_size, args.rounds)
        else:
            from transformers import RobertaForTokenClassification

            big = _text_models.distilroberta_sized(tok, RobertaForTokenClassification, schemas.PUNCTUATION_LABELS)
            bench("distilroberta-size", tok, big, make_words(max(args.words // 5, 1)), args.batch_size, args.rounds)


if __name__ == "__main__":
    main()
