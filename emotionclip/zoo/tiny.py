"""The `tiny` model profile: small random-weight models of the same classes as
the paper's, built locally and offline (docs/design.md section 6).

- a byte-level BPE tokenizer trained on a few sentences (so any text, emoji
  and non-Latin scripts included, tokenizes), wrapped as a transformers
  RobertaTokenizerFast;
- a 2-layer `RobertaForTokenClassification` with FullStop's punctuation labels;
- a 2-layer `RobertaForSequenceClassification` with the 7 emotion labels;
- an Ultralytics detector from its yaml (built by `emotionclip.stages.humans`).

They are saved exactly like pre-fetched hub models (`save_pretrained`
folders, a `.pt` file), so the loaders in `emotionclip.zoo` read them through
the same code path as the real weights. Builds are deterministic (fixed seeds)
and atomic per part (built in a temporary folder, then renamed into place).
"""

from __future__ import annotations

import io
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterable

from emotionclip.core.env import import_ultralytics
from emotionclip.core.schemas import EMOTIONS, PUNCTUATION_LABELS

TINY_DIR = "tiny"
# Part name -> file/folder name under <models_dir>/tiny (the catalog's tiny profile names these).
PARTS: dict[str, str] = {"punctuation": "punctuation", "emotion": "emotion", "detector": "detector.pt"}

SEED = 0
# RoBERTa's positional limit (514 positions = 512 tokens + padding offset), as in
# DistilRoBERTa, so truncation behaves like the paper's emotion model.
MAX_TOKENS = 512
# Small but not degenerate: enough to exercise batching, padding and masks.
HIDDEN = 32
LAYERS = 2
HEADS = 2
INTERMEDIATE = 64
VOCAB_SIZE = 600

# A few sentences in the register of TV dialogue; the byte-level alphabet
# covers everything else.
_CORPUS = [
    "I can't believe you did that to me!",
    "Where were you last night? I waited for hours.",
    "Oh my god, this is the best day of my life.",
    "Get out of my house, now.",
    "Please don't leave me here alone, I'm scared.",
    "That's disgusting, how could you eat that?",
    "We need to talk about what happened yesterday.",
    "Honestly, I don't know what to say: it's wonderful.",
    "He said he would call, but he never did.",
    "Well - maybe we should just go home and sleep.",
    "You are the most annoying person I have ever met.",
    "Thank you so much, I really mean it.",
]


def _train_tokenizer():
    """Byte-level BPE trained on `_CORPUS`, wrapped as RobertaTokenizerFast."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # RoBERTa's ids 0..4
    bpe = ByteLevelBPETokenizer(add_prefix_space=True)
    bpe.train_from_iterator(_CORPUS * 4, vocab_size=VOCAB_SIZE, min_frequency=2,
                            special_tokens=specials, show_progress=False)
    vocab = bpe.get_vocab()
    # merges in rank order, from the trained model's JSON
    import json

    merges = json.loads(bpe._tokenizer.to_str())["model"]["merges"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
    # add_prefix_space=True: the punctuation stage tokenizes pre-split words
    # (is_split_into_words), which RoBERTa tokenizers require it for.
    tok = RobertaTokenizerFast(vocab=vocab, merges=merges, add_prefix_space=True,
                               model_max_length=MAX_TOKENS)
    return tok


def _config(tok, labels: Iterable[str]):
    from transformers import RobertaConfig

    labels = list(labels)
    return RobertaConfig(
        vocab_size=len(tok),
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        max_position_embeddings=MAX_TOKENS + 2,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        id2label=dict(enumerate(labels)),
        label2id={lab: i for i, lab in enumerate(labels)},
    )


# Random weights at the default init give every input nearly the same output,
# which would make order/batching tests vacuous and the neutral filter keep all
# or nothing. So the head gets larger random weights and a bias calibrated on
# the corpus towards a plausible label prior: outputs then depend on the text,
# sentences end every ~10 words, and neutral scores spread over (0, 1).
_HEAD = {
    # kind: (encoder initializer_range, head weight std, label prior in label order)
    "punctuation": (0.02, 0.5, (0.90, 0.05, 0.03, 0.01, 0.005, 0.005)),  # 0 . , ? - :
    "emotion": (0.2, 2.0, (0.08, 0.03, 0.04, 0.15, 0.50, 0.10, 0.10)),  # EMOTIONS order
}


def _build_text_model(kind: str, out_dir: Path) -> None:
    import torch
    from transformers import RobertaForSequenceClassification, RobertaForTokenClassification

    tok = _train_tokenizer()
    init_range, head_std, prior = _HEAD[kind]
    torch.manual_seed(SEED)
    if kind == "punctuation":
        config = _config(tok, PUNCTUATION_LABELS)
        config.initializer_range = init_range
        model = RobertaForTokenClassification(config)
        head = model.classifier
        calib = tok([s.split() for s in _CORPUS], is_split_into_words=True, padding=True, return_tensors="pt")
    else:
        config = _config(tok, EMOTIONS)
        config.initializer_range = init_range
        model = RobertaForSequenceClassification(config)
        head = model.classifier.out_proj
        calib = tok(_CORPUS, padding=True, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        head.weight.normal_(0.0, head_std)
        head.bias.zero_()
        logits = model(**calib).logits
        if logits.dim() == 3:  # token classification: mean over real tokens
            logits = logits[calib["attention_mask"].bool()]
        head.bias.copy_(torch.log(torch.tensor(prior)) - logits.mean(0))
    tok.save_pretrained(out_dir)
    model.save_pretrained(out_dir)


TINY_DETECTOR_YAML = "yolo11n.yaml"
TINY_DETECTOR_SEED = 0
# Fixed so two builds of the tiny detector are byte-identical (Model.save stamps the time).
_TINY_DATE = "1970-01-01T00:00:00+00:00"


def build_tiny_detector(path: str | os.PathLike, seed: int = TINY_DETECTOR_SEED) -> Path:
    """Write a random-weight Ultralytics detector built from `yolo11n.yaml`
    (same classes and head as the real checkpoints) to `path`, loadable by
    `YOLO(path)`. Deterministic: same seed -> same bytes. Nothing is downloaded
    (the yaml ships inside the ultralytics wheel)."""
    import torch

    import_ultralytics()
    from copy import deepcopy

    from ultralytics import YOLO, __version__

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = YOLO(TINY_DETECTOR_YAML, verbose=False)
    # The checkpoint layout of `Model.save`, minus its wall-clock date.
    ckpt = {
        "ema": None,
        "model": deepcopy(model.model).half(),
        "modelopt": None,
        "date": _TINY_DATE,
        "version": __version__,
        "license": "AGPL-3.0 License (https://ultralytics.com/license)",
        "docs": "https://docs.ultralytics.com",
    }
    # Saved through a buffer: torch names the zip's records after the file, and
    # callers write to temporary names (emotionclip.zoo.tiny), so bytes would differ.
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    path.write_bytes(buf.getvalue())
    return path


def _build_detector(out_file: Path) -> None:
    build_tiny_detector(out_file)


def _build_part(part: str, final: Path) -> None:
    """Build one part into a temporary sibling, then rename it into place, so a
    concurrent reader never sees half a model."""
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        if part == "detector":
            _build_detector(tmp)
        else:
            tmp.mkdir(parents=True)
            _build_text_model(part, tmp)
        os.replace(tmp, final)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def tiny_paths(models_dir: str | os.PathLike) -> dict[str, Path]:
    base = Path(models_dir) / TINY_DIR
    return {part: base / name for part, name in PARTS.items()}


def build_tiny_models(
    models_dir: str | os.PathLike,
    only: Iterable[str] | None = None,
    force: bool = False,
) -> dict[str, Path]:
    """Build the tiny models under `<models_dir>/tiny/` and return {part: path}.

    Parts that already exist are kept (unless `force`). `only` restricts the
    build to some of "punctuation", "emotion", "detector". Not safe against a
    concurrent build of the same folder by itself: `emotionclip.zoo` takes a
    file lock around it.
    """
    paths = tiny_paths(models_dir)
    wanted = list(paths) if only is None else list(only)
    unknown = [p for p in wanted if p not in paths]
    if unknown:
        raise ValueError(f"unknown tiny model part(s) {unknown}; known: {sorted(paths)}")
    for part in wanted:
        final = paths[part]
        if final.exists() and not force:
            continue
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            shutil.rmtree(final) if final.is_dir() else final.unlink()
        _build_part(part, final)
    return {p: paths[p] for p in wanted}
