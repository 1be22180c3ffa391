"""Building models: tiny OpenCLIP config offline, paper weights offline -> ModelNotAvailable,
tokenizer truncation, catalog profiles, zero-shot scoring."""

from __future__ import annotations

import open_clip
import pytest
import torch

from emotionclip.core.errors import ModelNotAvailable
from emotionclip.models import (TINY_MODEL_NAME, EmotionCLIP, create_openclip, from_catalog, from_catalog_profile,
                                zero_shot_probs)


def test_tiny_config_is_registered_with_openclip():
    assert TINY_MODEL_NAME in open_clip.list_models()
    m = open_clip.create_model(TINY_MODEL_NAME)
    assert m.visual.image_size == (224, 224) and m.visual.patch_size == (32, 32)
    assert m.context_length == 77 and m.vocab_size == 49408


def test_missing_weights_file_is_model_not_available(tmp_path):
    with pytest.raises(ModelNotAvailable, match="does not exist"):
        create_openclip(TINY_MODEL_NAME, str(tmp_path / "weights.bin"))


def test_unknown_name_and_tag_are_value_errors():
    with pytest.raises(ValueError, match="unknown OpenCLIP model"):
        create_openclip("no-such-model")
    with pytest.raises(ValueError, match="unknown pretrained tag"):
        create_openclip("ViT-B-32", "no_such_tag")


def test_paper_profile_offline_is_model_not_available():
    # conftest sets HF_HUB_OFFLINE=1 and an empty HF_HOME: the laion2b_e16 weights are not there
    with pytest.raises(ModelNotAvailable, match="laion2b_e16"):
        from_catalog_profile("ViT-B-32", "laion2b_e16")


def test_weights_file_loads(tmp_path):
    torch.manual_seed(3)
    src = open_clip.create_model(TINY_MODEL_NAME)
    path = tmp_path / "tiny.bin"
    torch.save(src.state_dict(), path)
    model = from_catalog_profile(TINY_MODEL_NAME, str(path), subject_mode="vanilla", temporal="mean")
    assert torch.equal(model.clip.visual.proj, src.visual.proj)
    assert model.config.clip_pretrained == str(path)


def test_tokenizer_truncation_keeps_end_of_text():
    model = from_catalog_profile(TINY_MODEL_NAME, None)
    tok = model.tokenize(["so " * 200, "short"])
    eot = open_clip.SimpleTokenizer().eot_token_id
    assert tok.shape == (2, 77)
    assert tok[0, -1].item() == eot  # truncated, still ends with end-of-text
    assert tok[1].argmax().item() == (tok[1] == eot).nonzero()[0].item()  # EOT is what the text tower pools


def test_from_catalog_tiny_profile():
    from emotionclip.core.catalog import load_catalog

    cat = load_catalog(profile="tiny")
    model = from_catalog(cat, max_frames=4)
    assert model.config.clip_model == cat.models.clip_model == TINY_MODEL_NAME
    assert model.config.subject_mode == "sap" and model.config.temporal == "transformer"


def test_zero_shot_probabilities():
    torch.manual_seed(0)
    model = EmotionCLIP.from_openclip(TINY_MODEL_NAME, max_frames=4).eval()
    video = torch.randn(2, 4, 3, 224, 224)
    masks = torch.zeros(2, 4, 224, 224, dtype=torch.bool)
    labels = ["anger", "joy", "sadness"]
    p = zero_shot_probs(model, video, masks, labels)
    assert p.shape == (2, 3) and torch.allclose(p.sum(-1), torch.ones(2), atol=1e-5)
    one = zero_shot_probs(model, video[0], masks[0], labels, template=["a person feeling {}", "a {} face"])
    assert one.shape == (1, 3)
    with pytest.raises(ValueError, match="template"):
        zero_shot_probs(model, video, masks, labels, template="no placeholder")
