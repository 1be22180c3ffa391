"""What the two text-model benchmarks (punctuation, sentiment) share: their command
line, the tiny model folder, and a DistilRoBERTa-sized random RoBERTa of a head class."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch


def parse_args(doc: str, n_flag: str, n_default: int, n_help: str, batch_size: int) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["tiny", "distilroberta"], choices=["tiny", "distilroberta"])
    ap.add_argument(n_flag, type=int, default=n_default, help=n_help)
    ap.add_argument("--batch-size", type=int, default=batch_size)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--models-dir", default=None, help="where the tiny models are (built if missing)")
    # 1 by default: on a shared, loaded machine 2+ OpenMP threads make every small op
    # wait at barriers, which distorts per-call costs (the baselines' most).
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    return args


def models_dir(args: argparse.Namespace) -> Path:
    """The --models-dir, or a temporary one removed at exit (the tiny models are built there)."""
    if args.models_dir:
        return Path(args.models_dir)
    tmp = tempfile.TemporaryDirectory(prefix="bench-models-")
    models_dir._keep = tmp  # type: ignore[attr-defined]  # lives as long as the process
    return Path(tmp.name)


def distilroberta_sized(tok: Any, head: Any, labels: Sequence[str]) -> Any:
    """A random RoBERTa of DistilRoBERTa's size (6 layers, width 768) with `head`'s class."""
    from transformers import RobertaConfig

    torch.manual_seed(0)
    cfg = RobertaConfig(vocab_size=len(tok), hidden_size=768, num_hidden_layers=6, num_attention_heads=12,
                        intermediate_size=3072, max_position_embeddings=514, pad_token_id=tok.pad_token_id,
                        id2label=dict(enumerate(labels)), label2id={e: i for i, e in enumerate(labels)})
    return head(cfg).eval()
