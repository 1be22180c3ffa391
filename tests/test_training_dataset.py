"""The pre-training loader on real frame stores (ffmpeg-made videos)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from emotionclip.core.errors import StageError
from emotionclip.models.factory import TINY_MODEL_NAME, get_tokenizer
from emotionclip.core.schemas import LOGIT_COLUMNS
from emotionclip.models.transforms import normalize_frames
from emotionclip.training.dataset import ClipDataset, collate_clips, sample_frame_indices
from emotionclip.training.sampler import ResumableSampler
from training_data import BOX_PX, VIDEO_H, VIDEO_W


@pytest.fixture(scope="module")
def corpus(box_corpus):
    _, cat, df = box_corpus
    return cat, df


def _dataset(corpus, **kw) -> ClipDataset:
    cat, df = corpus
    return ClipDataset(df, lambda v: cat.artifact("frames", v), get_tokenizer(TINY_MODEL_NAME), **kw)


def test_shapes_and_types(corpus):
    ds = _dataset(corpus)
    item = ds[0]
    assert item["frames"].shape == (8, 3, 224, 224) and item["frames"].dtype == torch.uint8
    assert item["masks"].shape == (8, 224, 224) and item["masks"].dtype == torch.uint8
    assert item["tokens"].shape == (77,) and item["tokens"].dtype == torch.long
    assert torch.allclose(item["sentiment"], torch.tensor(corpus[1].loc[0, LOGIT_COLUMNS].to_numpy(np.float32)))
    batch = next(iter(DataLoader(ds, batch_size=3)))
    assert batch["frames"].shape == (3, 8, 3, 224, 224)
    x = normalize_frames(batch["frames"], (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert x.shape == (3, 8, 3, 224, 224) and x.dtype == torch.float32
    assert torch.allclose(x[1, 2, 0], (batch["frames"][1, 2, 0].float() / 255 - 0.5) / 0.25)


def test_frame_indices_in_range_sorted_and_repeating_when_short(corpus):
    ds = _dataset(corpus)
    _, df = corpus
    for i in range(len(ds)):
        idx = ds[i]["frame_idx"].numpy()
        start, end = df.loc[i, "frame_start"], df.loc[i, "frame_end"]
        assert idx.min() >= start and idx.max() <= end
        assert (np.diff(idx) >= 0).all()
        n = end - start + 1
        if n >= 8:
            assert len(set(idx.tolist())) == 8  # without replacement
        else:
            assert set(idx.tolist()) == set(range(start, end + 1))  # every frame, plus repeats


def test_sampling_rules():
    rng = np.random.default_rng(0)
    assert sample_frame_indices(10, 17, 8, train=False, rng=rng).tolist() == list(range(10, 18))
    assert sample_frame_indices(0, 70, 8, train=False, rng=rng).tolist() == [0, 10, 20, 30, 40, 50, 60, 70]
    assert sample_frame_indices(5, 7, 8, train=False, rng=rng).min() == 5
    draws = {tuple(sample_frame_indices(0, 30, 8, train=True, rng=rng)) for _ in range(20)}
    assert len(draws) > 1


def test_mask_agrees_with_crop(corpus):
    """The white box in the video lands exactly where the mask (from the normalized
    box, under the same per-frame random crop) says it is."""
    for train in (True, False):
        ds = _dataset(corpus, train=train)
        for i in (0, 3, 5):
            item = ds[i]
            img = item["frames"].float().mean(dim=1)  # [T, H, W] grey
            mask = item["masks"].bool()
            assert mask.any()
            # erode/dilate by 2 px: JPEG and scaling blur the box edges
            inner = -torch.nn.functional.max_pool2d(-mask.float()[:, None], 5, 1, 2)[:, 0] > 0.5
            outer = torch.nn.functional.max_pool2d(mask.float()[:, None], 5, 1, 2)[:, 0].bool()
            assert img[inner].min() > 200
            # (the conf-0.3 box on black would fail the first check if it were in the mask)
            assert img[~outer].max() < 60


def test_per_frame_random_crops_differ_and_eval_is_centred(corpus):
    ds = _dataset(corpus, train=True)
    masks = ds[0]["masks"]
    offsets = {tuple(np.argwhere(m.numpy())[0]) for m in masks}
    assert len(offsets) > 1  # independent crop per frame
    ev = _dataset(corpus, train=False)[0]["masks"]
    # centre crop of a 341x256 frame: left=58, top=16; box left edge at 100/320*341 = 106.6 px
    cols = np.argwhere(ev[0].numpy().any(axis=0))[:, 0]
    rows = np.argwhere(ev[0].numpy().any(axis=1))[:, 0]
    assert cols.min() == int(np.ceil(BOX_PX[0] / VIDEO_W * 341 - 0.5)) - 58
    assert rows.min() == int(np.ceil(BOX_PX[1] / VIDEO_H * 256 - 0.5)) - 16


def test_resized_when_stored_frames_are_larger(corpus, tmp_path):
    from emotionclip.models.transforms import PreprocessConfig

    ds = _dataset(corpus, preprocess=PreprocessConfig(resize=160, crop=128), train=False)
    item = ds[0]
    assert item["frames"].shape == (8, 3, 128, 128) and item["masks"].any()


def test_deterministic_per_epoch_and_index(corpus):
    ds = _dataset(corpus)
    a, b = ds[2], ds[2]
    assert torch.equal(a["frames"], b["frames"]) and torch.equal(a["frame_idx"], b["frame_idx"])
    ds.set_epoch(1)
    c = ds[2]
    assert not torch.equal(a["masks"], c["masks"]) or not torch.equal(a["frame_idx"], c["frame_idx"])


def test_workers_and_sampler_give_the_same_samples(corpus):
    ds = _dataset(corpus)
    sampler = ResumableSampler(len(ds), seed=3)
    sampler.set_epoch(0)
    one = [b["index"] for b in DataLoader(ds, batch_size=2, sampler=sampler, num_workers=0)]
    two = [b["index"] for b in DataLoader(ds, batch_size=2, sampler=sampler, num_workers=2)]
    assert torch.equal(torch.cat(one), torch.cat(two))


def test_unreadable_clip_is_logged_and_replaced(corpus, caplog):
    cat, df = corpus
    df = df.copy()
    df.loc[1, "video_id"] = "missing_video"  # no frame store
    df.loc[2, "frame_end"] = 10_000  # past the end of the store
    df.loc[2, "frame_start"] = 9_990
    ds = ClipDataset(df, lambda v: cat.artifact("frames", v), get_tokenizer(TINY_MODEL_NAME))
    with caplog.at_level(logging.WARNING):
        item1, item2 = ds[1], ds[2]
    assert int(item1["index"]) not in (1, 2)
    assert int(item2["index"]) not in (1, 2)
    assert item1["frames"].float().std() > 0  # real frames, not zeros
    assert "missing_video" in caplog.text and "vid0:2" in caplog.text
    assert int(ds[1]["index"]) == int(item1["index"])  # replacement is deterministic


def test_all_unreadable_raises_stage_error(corpus):
    cat, df = corpus
    df = df.copy()
    df["video_id"] = "missing_video"
    ds = ClipDataset(df, lambda v: cat.artifact("frames", v), get_tokenizer(TINY_MODEL_NAME), max_replacements=2)
    with pytest.raises(StageError, match="missing_video"):
        ds[0]


def test_sampler_resume_and_ranks():
    s = ResumableSampler(10, num_replicas=2, rank=1, seed=5)
    s.set_epoch(3)
    full = list(s)
    s.set_epoch(3, start=2)
    assert list(s) == full[2:]
    other = ResumableSampler(10, num_replicas=2, rank=0, seed=5)
    other.set_epoch(3)
    assert sorted(full + list(other)) == list(range(10))
    s.set_epoch(4)
    assert list(s) != full


def test_fsspec_data_root(corpus):
    """Frame stores under an fsspec URL (memory://) load the same clip."""
    import fsspec

    cat, df = corpus
    fs = fsspec.filesystem("memory")
    for vid in sorted(set(df["video_id"])):
        with open(cat.artifact("frames", vid), "rb") as f:
            fs.pipe(f"/clips-test/{vid}/frames.zip", f.read())
    remote = ClipDataset(df, lambda v: f"memory://clips-test/{v}/frames.zip", get_tokenizer(TINY_MODEL_NAME))
    local = _dataset(corpus)
    a, b = remote[4], local[4]
    assert torch.equal(a["frames"], b["frames"]) and torch.equal(a["masks"], b["masks"])


@pytest.mark.parametrize("workers", [0, 2])
def test_batched_loading_equals_per_sample(corpus, workers):
    """`__getitems__` + `collate_clips` (the training loop's path: frames decoded
    into one batch buffer, masks as crop-space rectangles rasterised later) gives
    exactly the per-sample items, in the main process and from workers."""
    from emotionclip.training.dataset import batch_masks, collate_clips

    ds = _dataset(corpus)
    fast = next(iter(DataLoader(ds, batch_size=4, num_workers=workers, collate_fn=collate_clips)))
    assert "masks" not in fast and fast["mask_boxes"].shape[1] == 6
    assert fast["frames"].shape == (4, 8, 3, 224, 224) and fast["frames"].dtype == torch.uint8
    per = [ds[i] for i in range(4)]
    for key in ("frames", "tokens", "sentiment", "frame_idx", "index"):
        assert torch.equal(fast[key], torch.stack([p[key] for p in per])), key
    masks = batch_masks(fast)
    assert masks.dtype == torch.uint8 and masks.any()
    assert torch.equal(masks, torch.stack([p["masks"] for p in per]))
    # the default collate on the same batches still gets dense masks
    plain = next(iter(DataLoader(ds, batch_size=4, num_workers=workers)))
    assert torch.equal(plain["masks"], masks) and torch.equal(plain["frames"], fast["frames"])


def _spy_shared_allocations(monkeypatch, path):
    """Count shared-memory frame buffers made, per process (forked workers inherit the spy)."""
    import os

    import emotionclip.training.dataset as dsmod

    real = dsmod._new_shared

    def counted(nbytes):
        with open(path / f"alloc.{os.getpid()}", "a") as f:
            f.write(".")
        return real(nbytes)

    monkeypatch.setattr(dsmod, "_new_shared", counted)
    return lambda: {p.name: len(p.read_text()) for p in path.glob("alloc.*")}


@pytest.mark.parametrize("keep", ["none", "every_third", "all"])
def test_reused_worker_buffers_never_corrupt_batches(corpus, monkeypatch, tmp_path, keep):
    """Workers reuse their frame buffers (a pool per worker) once the main process
    has dropped a batch: across many more batches than pool slots, every batch
    still equals the one loaded without workers, whether the consumer drops each
    batch at once (buffers reused), keeps some, or keeps all of them (then the
    pool runs dry and fresh buffers are made: held batches are never overwritten)."""
    from emotionclip.training.dataset import POOL_SLOTS, collate_clips

    ds = _dataset(corpus)
    order = [int(i) for i in np.random.default_rng(0).integers(0, len(ds), size=2 * 2 * 3 * POOL_SLOTS)]
    ref = list(DataLoader(ds, batch_size=2, sampler=order, num_workers=0, collate_fn=collate_clips))
    allocations = _spy_shared_allocations(monkeypatch, tmp_path)
    loader = DataLoader(ds, batch_size=2, sampler=order, num_workers=2, collate_fn=collate_clips,
                        prefetch_factor=4, multiprocessing_context="fork")
    kept = []
    for n, batch in enumerate(loader):
        want = ref[n]
        assert list(batch) == list(want)
        for key in want:
            assert torch.equal(batch[key], want[key]), (n, key)
        if keep == "all" or (keep == "every_third" and n % 3 == 0):
            kept.append((n, batch))
        del batch
    for n, batch in kept:  # what was kept is still intact after the workers went on
        for key in ref[n]:
            assert torch.equal(batch[key], ref[n][key]), (n, key)
    made = allocations()
    per_worker = len(ref) // 2
    assert len(made) == 2
    if keep == "none":
        assert all(v == 1 for v in made.values()), made  # one pool each, reused throughout
    if keep == "all":
        assert sum(made.values()) >= len(ref) - 2 * POOL_SLOTS, made  # pool exhausted: fresh buffers
    assert all(v <= per_worker for v in made.values())


def test_buffer_pool_slot_lifecycle():
    """A slot is free again when its batch never left the worker, stays taken once
    sent (until the main process frees it), and is never reused once its views
    escaped another way."""
    import gc

    from emotionclip.training.dataset import _BufferPool

    pool = _BufferPool(100, 2)
    a, lease_a = pool.acquire(100)
    b, lease_b = pool.acquire(64)
    assert pool.acquire(100) is None and pool.acquire(5000) is None  # all busy; too large
    del a, lease_a  # never sent: free again
    gc.collect()
    c, lease_c = pool.acquire(100)
    assert lease_c.slot == 0
    lease_c.set("sent")
    del c, lease_c
    gc.collect()
    assert pool.acquire(100) is None  # sent: only the main process frees it
    pool.free(0)
    d, lease_d = pool.acquire(100)
    lease_d.retire()
    del d, lease_d
    gc.collect()
    pool.free(1)
    e, lease_e = pool.acquire(100)
    assert lease_e.slot == 1  # slot 0 retired
    assert pool.acquire(100) is None


def test_torch_distributed_sampler(corpus):
    """Two ranks of torch's own DistributedSampler: the ranks' batches cover every
    clip once and equal the dataset's batches for the same indices."""
    from torch.utils.data import DistributedSampler

    ds = _dataset(corpus)
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=1)
        sampler.set_epoch(0)
        for batch in DataLoader(ds, batch_size=2, sampler=sampler, num_workers=0, collate_fn=collate_clips):
            idx = batch["index"].tolist()
            direct = collate_clips(ds.__getitems__(idx))
            assert torch.equal(batch["frames"], direct["frames"])
            seen += idx
    assert sorted(seen) == list(range(len(ds)))
