"""Model loading: each model loaded once per process behind a lock, offline errors that
say how to fetch the weights, and the tiny profile's random-weight models."""

from emotionclip.zoo.loaders import (
    FETCH_HINT,
    default_device,
    ensure_model,
    load_emotion_model,
    load_punctuation_model,
    locked_cache,
    model_device,
    model_max_tokens,
)

__all__ = [
    "FETCH_HINT", "default_device", "ensure_model", "load_emotion_model", "load_punctuation_model",
    "locked_cache", "model_device", "model_max_tokens",
]
