"""The one preprocessing path (emotionclip.models.transforms): decode, resize, crop,
mask rule, batched masks; and training (ClipDataset) = evaluation (features)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from emotionclip.evaluation.features import stored_clip_inputs
from emotionclip.models.factory import TINY_MODEL_NAME, get_tokenizer
from emotionclip.models.transforms import (
    ClipPreprocessor,
    PreprocessConfig,
    SubjectBoxes,
    box_crop_ranges,
    boxes_per_frame,
    boxes_to_mask,
    decode_frame,
    mask_boxes,
    normalize_frames,
    rasterize_mask_boxes,
    subject_masks,
)
from emotionclip.core.frame_store import FrameStore
from emotionclip.training.dataset import ClipDataset, sample_frame_indices


@pytest.fixture(scope="module")
def corpus(box_corpus):
    _, cat, df = box_corpus
    return cat, df


def _random_boxes(rng: np.random.Generator, n: int, lo: float = -0.1, hi: float = 1.1) -> np.ndarray:
    xy = rng.uniform(lo, hi, size=(n, 4)).astype(np.float32)
    return np.concatenate([np.minimum(xy[:, :2], xy[:, 2:]), np.maximum(xy[:, :2], xy[:, 2:])], 1)


def _centre_rule(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Reference: pixel (y, x) is in a box when its float32 centre is: x1 <= (x + .5) / w < x2."""
    ys = (np.arange(height, dtype=np.float32) + np.float32(0.5)) / np.float32(height)
    xs = (np.arange(width, dtype=np.float32) + np.float32(0.5)) / np.float32(width)
    m = np.zeros((height, width), bool)
    for x1, y1, x2, y2 in np.asarray(boxes, np.float32):
        m |= ((ys >= y1) & (ys < y2))[:, None] & ((xs >= x1) & (xs < x2))[None, :]
    return m


# -- pixels ------------------------------------------------------------------------------

def test_decoded_frames_match_the_frame_store(corpus):
    """torchvision's decode of the stored JPEG = the FrameStore's PIL image (both libjpeg)."""
    cat, _ = corpus
    store = FrameStore(cat.artifact("frames", "vid0"))
    ours = decode_frame(store.read_bytes(3))
    assert ours.dtype == torch.uint8 and ours.shape[0] == 3
    pil = np.asarray(store[3]).astype(int)
    assert ours.permute(1, 2, 0).numpy().shape == pil.shape
    assert np.abs(ours.permute(1, 2, 0).numpy().astype(int) - pil).max() <= 2


def test_non_jpeg_images_decode_through_pil():
    arr = np.random.default_rng(0).integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    assert np.array_equal(decode_frame(buf.getvalue()).permute(1, 2, 0).numpy(), arr)


def test_frame_inputs_of_every_kind_give_the_same_clip(corpus):
    """Bytes, the decoded tensor, and the same pixels as a PIL image: the same crop."""
    cat, _ = corpus
    store = FrameStore(cat.artifact("frames", "vid0"))
    data = store.read_bytes(2)
    tensor = decode_frame(data)
    pil = Image.fromarray(tensor.permute(1, 2, 0).numpy())
    pre = ClipPreprocessor(PreprocessConfig(resize=160, crop=128))
    a, b, c = (pre.crop([f])[0] for f in (data, tensor, pil))
    assert a.shape == (1, 3, 128, 128) and torch.equal(a, b) and torch.equal(a, c)


# -- masks -------------------------------------------------------------------------------

def test_box_crop_ranges_follow_the_pixel_centre_rule():
    """Batched rectangles (mixed frame sizes, crops anywhere) painted by
    rasterize_mask_boxes = the centre rule on the whole frame, then cropped."""
    rng = np.random.default_rng(3)
    for trial in range(30):
        n, s = int(rng.integers(1, 12)), int(rng.integers(8, 48))
        boxes = _random_boxes(rng, n, -0.2, 1.2)
        sizes = rng.integers(s, s + 40, size=(n, 2)) if trial % 2 else np.tile(rng.integers(s, s + 40, 2), (n, 1))
        left = np.asarray([rng.integers(0, w - s + 1) for w in sizes[:, 0]])
        top = np.asarray([rng.integers(0, h - s + 1) for h in sizes[:, 1]])
        geometry = np.stack([sizes[:, 0], sizes[:, 1], left, top], 1)
        ranges = box_crop_ranges(boxes, geometry, s)
        rows = np.concatenate([np.zeros((n, 1), np.int32), np.arange(n, dtype=np.int32)[:, None], ranges], 1)
        got = rasterize_mask_boxes(torch.from_numpy(rows), 1, n, s)[0].bool().numpy()
        for r in range(n):
            w, h, lf, tp = (int(v) for v in geometry[r])
            want = _centre_rule(boxes[r:r + 1], w, h)[tp:tp + s, lf:lf + s]
            assert np.array_equal(got[r], want), (trial, r)


def test_cropped_masks_equal_the_full_frame_mask_cropped():
    rng = np.random.default_rng(1)
    for _ in range(20):
        boxes = _random_boxes(rng, 3, 0.0, 1.0)
        conf = rng.uniform(0, 1, size=3).astype(np.float32)
        w, h = int(rng.integers(64, 200)), int(rng.integers(64, 150))
        left, top = int(rng.integers(0, w - 64 + 1)), int(rng.integers(0, h - 64 + 1))
        full = boxes_to_mask(boxes, conf, h, w)
        assert full.dtype == torch.bool and full.shape == (h, w)
        assert np.array_equal(full.numpy(), _centre_rule(boxes[conf > 0.5], w, h))
        sb = SubjectBoxes.from_frames([boxes], [conf], np.asarray([[w, h, left, top]]))
        assert torch.equal(subject_masks(sb, 1, 64)[0].bool(), full[top:top + 64, left:left + 64])


def test_manifest_rows_and_per_frame_boxes_give_the_same_masks():
    """ClipDataset's form (one [K, 6] array, frames matched by index, a frame taken
    twice gets its boxes twice) = evaluation's per-frame lists; conf > 0.5 in both."""
    rng = np.random.default_rng(4)
    frame_idx = np.asarray([3, 3, 5, 7, 9])
    rows = []
    for k in (3, 5, 6, 9):
        rows.append([k, *rng.uniform(0.1, 0.3, 2), *rng.uniform(0.7, 0.9, 2), 0.9])  # covers every crop's middle
        rows.append([k, *_random_boxes(rng, 1)[0], 0.4])  # below the threshold
    rows_np = np.asarray(rows, np.float32)
    geometry = np.stack([np.full(5, 90), np.full(5, 70), rng.integers(0, 90 - 48, 5), rng.integers(0, 70 - 48, 5)], 1)
    geometry[1] = geometry[0]  # frame 3 taken twice with the same crop
    a = SubjectBoxes.from_rows(rows_np, frame_idx, geometry)
    per_b = [rows_np[rows_np[:, 0] == k][:, 1:5] for k in frame_idx]
    per_c = [rows_np[rows_np[:, 0] == k][:, 5] for k in frame_idx]
    b = SubjectBoxes.from_frames(per_b, per_c, geometry)
    ma, mb = subject_masks(a, 5, 48), subject_masks(b, 5, 48)
    assert torch.equal(ma, mb) and ma[0].any() and torch.equal(ma[0], ma[1]) and not ma[3].any()


def test_batched_mask_boxes_equal_per_clip_masks():
    rng = np.random.default_rng(5)
    clips = []
    for _ in range(3):
        geometry = np.stack([np.full(4, 80), np.full(4, 64), rng.integers(0, 33, 4), rng.integers(0, 17, 4)], 1)
        per = [_random_boxes(rng, int(rng.integers(0, 3))) for _ in range(4)]
        clips.append(SubjectBoxes.from_frames(per, None, geometry))
    batched = rasterize_mask_boxes(torch.from_numpy(mask_boxes(clips, 48)), 3, 4, 48)
    assert torch.equal(batched, torch.stack([subject_masks(c, 4, 48) for c in clips]))
    assert not rasterize_mask_boxes(torch.zeros(0, 6, dtype=torch.int32), 1, 2, 8).any()


# -- training = evaluation ---------------------------------------------------------------

@pytest.mark.parametrize("preprocess", [PreprocessConfig(), PreprocessConfig(resize=160, crop=128)],
                         ids=["stored-size", "resized"])
def test_training_and_evaluation_give_identical_frames_and_masks(corpus, preprocess):
    """The same clip and crop through ClipDataset (the pre-training loader) and
    through evaluation's feature preprocessing (`stored_clip_inputs` +
    ClipPreprocessor): identical frames, bit for bit after normalisation, and
    identical masks. Centre crops as evaluation uses them, and random crops from
    the same generator state."""
    cat, df = corpus
    tok = get_tokenizer(TINY_MODEL_NAME)
    stores = {v: FrameStore(cat.artifact("frames", v)) for v in sorted(set(df["video_id"]))}
    for train in (False, True):
        ds = ClipDataset(df, lambda v: cat.artifact("frames", v), tok, preprocess=preprocess, train=train)
        pre = ClipPreprocessor(preprocess, train=train)
        for i in range(len(df)):
            row = df.iloc[i]
            if train:
                item = ds.load(i, np.random.default_rng(i))
                rng = np.random.default_rng(i)  # the same draws: frame indices first, then the crops
                idx = sample_frame_indices(int(row.frame_start), int(row.frame_end), ds.num_frames, True, rng)
                assert np.array_equal(idx, item["frame_idx"].numpy())
            else:
                item, rng = ds[i], None
                idx = item["frame_idx"].numpy()
            boxes, confs = boxes_per_frame(row.boxes, idx)
            store = stores[row.video_id]
            if train:  # the random-crop path: ClipPreprocessor with the loader's generator
                frames, masks = pre([store.read_bytes(int(k)) for k in idx], boxes, confs, rng=rng)
            else:  # exactly what extract_features runs per video sample
                frames, masks = stored_clip_inputs(store, idx, boxes, confs, pre)
            want = normalize_frames(item["frames"], preprocess.mean, preprocess.std)
            assert frames.dtype == torch.float32 and torch.equal(frames, want), (train, i)
            assert masks.dtype == torch.bool and torch.equal(masks, item["masks"].bool()), (train, i)
            assert masks.any()
    for s in stores.values():
        s.close()


def test_clip_preprocessor_crop_is_the_loader_sample(corpus):
    """`ClipPreprocessor.crop` gives a clip in ClipDataset's own dtypes (uint8 frames and masks)."""
    cat, df = corpus
    ds = ClipDataset(df, lambda v: cat.artifact("frames", v), get_tokenizer(TINY_MODEL_NAME), train=False)
    item = ds[5]
    idx = item["frame_idx"].numpy()
    boxes, confs = boxes_per_frame(df.iloc[5].boxes, idx)
    store = FrameStore(cat.artifact("frames", df.iloc[5].video_id))
    frames, masks = ClipPreprocessor(ds.preprocess).crop([store.read_bytes(int(k)) for k in idx], boxes, confs)
    assert frames.dtype == masks.dtype == torch.uint8
    assert torch.equal(frames, item["frames"]) and torch.equal(masks, item["masks"])
