"""Stage-major batches of the text-model stages (wall time per batch of videos):
one `run_sentences_many` / `run_sentiment_many` call over N videos against N
per-video `run_sentences` / `run_sentiment` calls (the baseline), measured in the
same run on the same model and inputs. Both read their inputs and write their
Parquet outputs (the whole stage, not just the model), each into its own data root,
and the outputs are checked equal before timing.

    .venv/bin/python bench/bench_stage_batching.py                     # tiny + DistilRoBERTa-size
    .venv/bin/python bench/bench_stage_batching.py --sizes tiny --videos 50 --rounds 5

The DistilRoBERTa-size part takes ~6 min on one loaded CPU core (one timed round).

Videos have 3-20 sentences of 2-30 words (the words table of a video is its
sentences' words), the catalog's batch sizes (sentences 8 chunks, sentiment 64).
Sizes: `tiny` (the tiny profile's 2-layer models) and `distilroberta` (random
weights with DistilRoBERTa's shape, 6 layers, hidden 768, saved to a folder the
catalog points at: real weights are not fetched offline).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

import _text_models  # noqa: E402  (bench/ is on sys.path when run as a script)

from emotionclip.core import io, schemas  # noqa: E402
from emotionclip.core.catalog import load_catalog  # noqa: E402
from emotionclip.stages.sentences import run_sentences, run_sentences_many  # noqa: E402
from emotionclip.stages.sentiment import run_sentiment, run_sentiment_many  # noqa: E402
from emotionclip.zoo import load_emotion_model, load_punctuation_model, tiny  # noqa: E402


def make_videos(n_videos: int, lo: int, hi: int, seed: int = 0) -> dict[str, list[list[str]]]:
    """Per video, `lo`-`hi` sentences (as word lists) of 2-30 corpus words."""
    vocab = [w.strip(".,?!:") for w in " ".join(tiny._CORPUS).split()]
    rng = np.random.default_rng(seed)
    return {f"vid{v:03d}": [list(rng.choice(vocab, size=int(rng.integers(2, 31))))
                            for _ in range(int(rng.integers(lo, hi + 1)))]
            for v in range(n_videos)}


def write_inputs(catalog, videos: dict[str, list[list[str]]]) -> None:
    for vid, sents in videos.items():
        words = [w for s in sents for w in s]
        t = np.arange(len(words)) * 0.4
        wdf = pd.DataFrame({"word": words, "start_s": t, "end_s": t + 0.3, "precision": ["segment"] * len(words)})
        io.atomic_write_parquet(catalog.artifact("words", vid), schemas.to_table(wdf, schemas.WORDS))
        n = len(sents)
        sdf = pd.DataFrame({"sentence_idx": np.arange(n, dtype=np.int32), "text": [" ".join(s) for s in sents],
                            "start_s": np.arange(n, dtype=float), "end_s": np.arange(n, dtype=float) + 0.9,
                            "n_words": np.array([len(s) for s in sents], dtype=np.int32)})
        io.atomic_write_parquet(catalog.artifact("sentences", vid), schemas.to_table(sdf, schemas.SENTENCES))


def distilroberta_refs(models_dir: Path) -> dict[str, str]:
    """DistilRoBERTa-sized random models with the tiny tokenizers, saved where a catalog can load them."""
    from transformers import RobertaForSequenceClassification, RobertaForTokenClassification

    out = {}
    for part, loader, head, labels in [
        ("punctuation", load_punctuation_model, RobertaForTokenClassification, schemas.PUNCTUATION_LABELS),
        ("emotion", load_emotion_model, RobertaForSequenceClassification, schemas.EMOTIONS),
    ]:
        tok, _ = loader(str(models_dir / "tiny" / part))
        folder = models_dir / "distilroberta-size" / part
        if not folder.exists():
            _text_models.distilroberta_sized(tok, head, labels).save_pretrained(folder)
            tok.save_pretrained(folder)
        out[f"profiles.tiny.{part}"] = str(folder)
    return out


def check_same(stage: str, per, many, vids: list[str]) -> None:
    for vid in vids:
        a = io.read_parquet(per.artifact(stage, vid))
        b = io.read_parquet(many.artifact(stage, vid))
        if stage == "sentences":
            pd.testing.assert_frame_equal(a, b)
        else:
            num = a.select_dtypes("number").columns
            assert (a["sentence_idx"] == b["sentence_idx"]).all()
            assert np.allclose(a[num].to_numpy(), b[num].to_numpy(), atol=1e-5), vid


def bench(name: str, models_dir: Path, root: Path, args: argparse.Namespace, overrides: dict) -> None:
    videos = make_videos(args.videos, args.min_sentences, args.max_sentences)
    vids = list(videos)

    def catalog(stage: str, kind: str):
        # a data root per stage and kind: the sentences stage overwrites the sentiment stage's input
        cat = load_catalog(profile="tiny", data_root=str(root / name / stage / kind),
                           overrides={"models_dir": str(models_dir), **overrides})
        write_inputs(cat, videos)
        return cat

    params = load_catalog(profile="tiny", overrides=overrides).stages
    n_sent = sum(len(s) for s in videos.values())
    n_words = sum(len(w) for s in videos.values() for w in s)
    print(f"[{name}] {len(vids)} videos, {n_sent} sentences ({args.min_sentences}-{args.max_sentences} per video), "
          f"{n_words} words, torch threads={torch.get_num_threads()}, "
          f"rounds={args.rounds if name == 'tiny' else args.big_rounds}, "
          f"batch sizes: sentences {params.sentences.batch_size} chunks of <= "
          f"{params.sentences.chunk_words} words, sentiment {params.sentiment.batch_size}")
    rounds = args.rounds if name == "tiny" else args.big_rounds
    for stage, one, many_fn, unit, loader, part in [
        ("sentences", run_sentences, run_sentences_many, n_words, load_punctuation_model, "punctuation"),
        ("sentiment", run_sentiment, run_sentiment_many, n_sent, load_emotion_model, "emotion"),
    ]:
        per, many = catalog(stage, "per"), catalog(stage, "many")

        def baseline(ids=vids, one=one, per=per):
            for v in ids:
                one(per, v, device="cpu")

        def ours(ids=vids, many_fn=many_fn, many=many):
            res = many_fn(many, ids, device="cpu")
            bad = {v: r for v, r in res.items() if isinstance(r, BaseException)}
            assert not bad, bad

        baseline(vids[:1]); ours(vids[:1])  # warm-up: model load
        _, model = loader(per.model_ref(part), "cpu")  # the cached instance the stages use
        calls = []
        t_base, t_ours = [], []
        for _ in range(rounds):  # alternate, so load from other processes hits both alike
            for fn, times in ((baseline, t_base), (ours, t_ours)):
                handle = model.register_forward_hook(lambda *a, f=fn, calls=calls: calls.append(f))
                t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
                handle.remove()
        check_same(stage, per, many, vids)  # the outputs agree
        b, o = statistics.median(t_base), statistics.median(t_ours)
        what = "words" if stage == "sentences" else "sentences"
        n_b, n_o = calls.count(baseline) // rounds, calls.count(ours) // rounds
        print(f"  {stage}: per-video run_{stage} x{len(vids)}: {b:7.3f} s ({unit / b:8.1f} {what}/s, "
              f"{n_b} model calls)")
        print(f"  {stage}: one run_{stage}_many:        {o:7.3f} s ({unit / o:8.1f} {what}/s, "
              f"{n_o} model calls)")
        print(f"  {stage}: ratio {b / o:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["tiny", "distilroberta"], choices=["tiny", "distilroberta"])
    ap.add_argument("--videos", type=int, default=50, help="videos in the batch")
    ap.add_argument("--min-sentences", type=int, default=3)
    ap.add_argument("--max-sentences", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds (tiny)")
    ap.add_argument("--big-rounds", type=int, default=1,
                    help="timed rounds (distilroberta: ~3 min a round on one loaded core)")
    ap.add_argument("--models-dir", default=None, help="where the tiny models are (built if missing)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (see _text_models)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models_dir = _text_models.models_dir(args)
    with tempfile.TemporaryDirectory(prefix="bench-stage-batching-") as tmp:
        for size in args.sizes:
            overrides = {} if size == "tiny" else distilroberta_refs(models_dir)
            bench(size, models_dir, Path(tmp), args, overrides)


if __name__ == "__main__":
    main()
