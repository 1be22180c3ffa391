"""Loading the text-stage models (punctuation, emotion), once per process.

A `ref` is what `Catalog.model_ref(...)` returns: a Hugging Face hub id
(paper profile, fetched into the usual HF cache on first use) or an absolute
local folder (pre-fetched weights, or the tiny profile). Both go through the
same `from_pretrained` call. The only extra step is "build it if missing": a
ref under `<models_dir>/tiny/` that does not exist yet is built on first use,
under a file lock so parallel workers build it once.
"""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path
from typing import Any

from emotionclip.core.errors import ModelNotAvailable
from emotionclip.zoo.tiny import PARTS, TINY_DIR

FETCH_HINT = (
    "Pre-fetch the weights on a machine with internet with `emotionclip models fetch "
    "--out DIR`, copy DIR here and point the catalog's profile entry (or models_dir) "
    "at it; or use the offline `tiny` profile (`--profile tiny`)."
)


def _looks_local(ref: str) -> bool:
    return os.path.isabs(ref) or ref.startswith(("./", "../", "~"))


def ensure_model(ref: str) -> str:
    """Return `ref`, building it first when it names a missing tiny model
    (`<models_dir>/tiny/<part>`). Other refs are returned unchanged."""
    p = Path(ref).expanduser()
    if not _looks_local(ref) or p.exists():
        return ref
    part = {name: part for part, name in PARTS.items()}.get(p.name)
    if p.parent.name == TINY_DIR and part is not None:
        from filelock import FileLock

        from emotionclip.zoo.tiny import build_tiny_models

        models_dir = p.parent.parent
        models_dir.mkdir(parents=True, exist_ok=True)
        # Parallel workers: the first builds, the others wait and then find it there.
        with FileLock(str(models_dir / ".tiny.lock")):
            if not p.exists():
                build_tiny_models(models_dir, only=[part])
        return str(p)
    raise ModelNotAvailable(f"model folder {ref} does not exist. {FETCH_HINT}")


def _from_pretrained(kind: str, ref: str, model_cls: Any) -> tuple[Any, Any]:
    from transformers import AutoTokenizer

    ref = ensure_model(ref)
    try:
        tokenizer = AutoTokenizer.from_pretrained(ref)
        model = model_cls.from_pretrained(ref)
    except (OSError, ValueError) as e:
        # Hub ids that are not in the local cache while offline (HF_HUB_OFFLINE=1
        # or no network) surface as OSError/ValueError subclasses. A local folder
        # that exists but is broken is a different problem: re-raise as is.
        if _looks_local(ref):
            raise
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        raise ModelNotAvailable(
            f"the {kind} model weights {ref!r} are not available"
            f"{' (HF_HUB_OFFLINE is set)' if offline else ''}: {type(e).__name__}: {str(e).strip().rstrip('.')}. "
            f"{FETCH_HINT}"
        ) from e
    return tokenizer, model


# transformers' lazy module import and lru_cache's first call are not thread-safe:
# concurrent stage threads must load a model once, one at a time.
_LOAD_LOCK = threading.RLock()


def locked_cache(fn):
    cached = functools.lru_cache(maxsize=8)(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _LOAD_LOCK:
            return cached(*args, **kwargs)

    wrapper.cache_clear = cached.cache_clear
    wrapper.cache_info = cached.cache_info
    return wrapper


def _prepare(model: Any, device: str) -> Any:
    model.to(device)
    model.eval()  # dropout off: scores must be deterministic
    return model


@locked_cache
def load_punctuation_model(ref: str, device: str = "cpu") -> tuple[Any, Any]:
    """(tokenizer, token-classification model) for the sentences stage, cached
    per (ref, device) for the process."""
    from transformers import AutoModelForTokenClassification

    tok, model = _from_pretrained("punctuation", ref, AutoModelForTokenClassification)
    return tok, _prepare(model, device)


@locked_cache
def load_emotion_model(ref: str, device: str = "cpu") -> tuple[Any, Any]:
    """(tokenizer, sequence-classification model) for the sentiment stage, cached
    per (ref, device) for the process."""
    from transformers import AutoModelForSequenceClassification

    tok, model = _from_pretrained("emotion", ref, AutoModelForSequenceClassification)
    return tok, _prepare(model, device)


def model_max_tokens(tokenizer: Any, model: Any) -> int:
    """The longest input (special tokens included) the model accepts: the
    tokenizer's limit and the position table's, whichever is smaller."""
    limits = []
    tml = getattr(tokenizer, "model_max_length", None)
    if tml and tml < 1_000_000:  # transformers uses a huge sentinel when unset
        limits.append(int(tml))
    cfg = model.config
    mpe = getattr(cfg, "max_position_embeddings", None)
    if mpe:
        # RoBERTa-family position ids start after padding_idx: pad_token_id + 1 slots are never used.
        offset = (cfg.pad_token_id or 0) + 1 if "roberta" in str(getattr(cfg, "model_type", "")) else 0
        limits.append(int(mpe) - offset)
    return min(limits) if limits else 512


def model_device(model: Any) -> Any:
    return next(model.parameters()).device


def default_device() -> str:
    """`cuda` when a GPU is present, else `cpu`."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
