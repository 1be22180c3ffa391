"""Preprocessing: masks from normalised boxes, resize 256 / crop 224, mask follows the image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from emotionclip.models import ClipPreprocessor, PreprocessConfig, boxes_per_frame, boxes_to_mask
from emotionclip.models.transforms import CLIP_MEAN, CLIP_STD, resized_size


def test_boxes_to_mask_by_hand():
    # 4 x 8 frame; box x in [0.25, 0.5), y in [0.5, 1.0): pixel centres x 2.5/8, 3.5/8 and y 2.5/4, 3.5/4
    m = boxes_to_mask([[0.25, 0.5, 0.5, 1.0]], [0.9], height=4, width=8)
    expected = torch.zeros(4, 8, dtype=torch.bool)
    expected[2:4, 2:4] = True
    assert torch.equal(m, expected)


def test_boxes_to_mask_union_and_confidence_threshold():
    boxes = np.array([[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1], [0, 0.5, 0.5, 1]], dtype=np.float32)
    conf = np.array([0.9, 0.51, 0.5])  # the authors kept conf > 0.5
    m = boxes_to_mask(boxes, conf, 4, 4)
    assert m[:2, :2].all() and m[2:, 2:].all()
    assert not m[2:, :2].any() and not m[:2, 2:].any()
    assert boxes_to_mask(boxes, None, 4, 4).sum() == 12  # conf=None keeps all
    assert not boxes_to_mask(np.zeros((0, 4)), np.zeros(0), 4, 4).any()


def test_resized_size_keeps_aspect():
    assert resized_size(640, 360, 256) == (455, 256)
    assert resized_size(360, 640, 256) == (256, 455)
    assert resized_size(455, 256, 256) == (455, 256)


def _frame_with_box(w, h, box):
    """Black frame, white inside the (normalised) box, so the mask is visible in the pixels."""
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    m = boxes_to_mask([box], None, h, w).numpy()
    arr[m] = 255
    return Image.fromarray(arr)


def test_mask_gets_the_same_random_crop_as_the_frame():
    box = [0.1, 0.2, 0.45, 0.9]
    frames = [_frame_with_box(455, 256, box) for _ in range(6)]
    pre = ClipPreprocessor(PreprocessConfig(mean=(0, 0, 0), std=(1, 1, 1)), train=True)
    video, masks = pre(frames, [np.array([box])] * 6, [np.array([0.9])] * 6, rng=np.random.default_rng(0))
    assert video.shape == (6, 3, 224, 224) and video.dtype == torch.float32
    assert masks.shape == (6, 224, 224) and masks.dtype == torch.bool
    for t in range(6):
        white = video[t, 0] > 0.5
        assert torch.equal(white, masks[t])
    # random per frame: not all crops equal
    assert any(not torch.equal(masks[0], masks[t]) for t in range(1, 6))


def test_eval_centre_crop_and_normalisation():
    img = Image.fromarray(np.full((300, 400, 3), 128, dtype=np.uint8))
    pre = ClipPreprocessor(PreprocessConfig(), train=False)
    video, masks = pre([img, img])
    assert video.shape == (2, 3, 224, 224)
    expected = (128 / 255 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert torch.allclose(video[0, :, 100, 100], expected, atol=1e-3)
    assert not masks.any()  # no boxes: no subject
    # centre crop: the box centred in the frame stays centred
    box = [0.375, 0.25, 0.625, 0.75]
    f = _frame_with_box(400, 300, box)
    _, m = pre([f], [np.array([box])], [np.array([1.0])])
    ys, xs = torch.nonzero(m[0], as_tuple=True)
    assert abs((ys.float().mean() - 111.5).item()) < 1.5 and abs((xs.float().mean() - 111.5).item()) < 1.5


def test_boxes_per_frame_from_manifest_rows():
    rows = [
        {"frame_idx": 10, "x1": 0.1, "y1": 0.1, "x2": 0.5, "y2": 0.5, "conf": 0.9},
        {"frame_idx": 12, "x1": 0.2, "y1": 0.2, "x2": 0.6, "y2": 0.6, "conf": 0.3},
        {"frame_idx": 12, "x1": 0.0, "y1": 0.0, "x2": 1.0, "y2": 1.0, "conf": 0.8},
    ]
    boxes, confs = boxes_per_frame(rows, [10, 11, 12])
    assert [b.shape for b in boxes] == [(1, 4), (0, 4), (2, 4)]
    assert confs[2].tolist() == pytest.approx([0.3, 0.8])


def test_config_rejects_crop_larger_than_resize():
    with pytest.raises(ValueError, match="crop"):
        PreprocessConfig(resize=200, crop=224)
