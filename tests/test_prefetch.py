"""The device prefetcher (emotionclip.training.prefetch) on CPU: the same batches
in the same order as the loader, nothing freed before the consumer is done with
it, loader errors raised at the batch they belong to, and the device-side
preparation (normalise, rasterise masks) equal to the CPU path of today's
per-sample loader output."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from emotionclip.models.transforms import normalize_frames
from emotionclip.training.config import make_config
from emotionclip.training.dataset import collate_clips
from emotionclip.training.loader import epoch_batches
from emotionclip.training.prefetch import DeviceBatch, DevicePrefetcher, prepare_batch
from emotionclip.training.state import setup
from training_data import write_manifest

MEAN, STD = (0.48, 0.45, 0.40), (0.26, 0.26, 0.27)


@pytest.fixture(scope="module")
def state(clip_corpus, tmp_path_factory):
    root, _, df = clip_corpus
    out = tmp_path_factory.mktemp("prefetch")
    manifest = write_manifest(df, out / "clips-00000.parquet")
    cfg = make_config("paper", manifests=str(manifest), out_dir=str(out / "run"), profile="tiny",
                      data_root=str(root), batch_size=2, num_workers=0, num_frames=2, device="cpu")
    return setup(cfg)


def _source(n: int, fail_at: int | None = None):
    """Loader-like batches (uint8 frames, crop-space mask rectangles), and a failure at `fail_at`."""
    g = torch.Generator().manual_seed(0)
    for k in range(n):
        if k == fail_at:
            raise OSError(f"batch {k} unreadable")
        yield {"frames": torch.randint(0, 256, (2, 2, 3, 8, 8), dtype=torch.uint8, generator=g),
               "mask_boxes": torch.tensor([[0, 1, 1, 5, 2, 7], [1, 0, 0, 8, 0, 3]], dtype=torch.int32),
               "tokens": torch.randint(0, 100, (2, 5), generator=g), "sentiment": torch.randn(2, 7, generator=g),
               "index": torch.tensor([2 * k, 2 * k + 1])}


@pytest.mark.parametrize("ahead", [False, True])
def test_same_batches_in_the_same_order_as_the_loader(state, ahead):
    mean, std = state.model.preprocess_cfg.mean, state.model.preprocess_cfg.std
    plain = list(epoch_batches(state.loader, 0, start=0, seed=state.config.seed))
    fed = list(DevicePrefetcher(epoch_batches(state.loader, 0, start=0, seed=state.config.seed), state.device,
                                mean, std, ahead=ahead))
    assert len(fed) == len(plain) >= 3 and all(isinstance(b, DeviceBatch) for b in fed)
    for got, want in zip(fed, plain):
        assert torch.equal(got.batch["index"], want["index"])
        ref = prepare_batch(want, state.device, mean, std)
        for a, b in zip(got.tensors(), ref.tensors()):
            assert a.dtype == b.dtype and torch.equal(a, b)


def test_device_preparation_equals_the_cpu_path(state):
    """Normalised frames and rasterised masks from the batch's rectangles equal the
    per-sample CPU path (`ClipBatch` items: dense masks, then `normalize_frames`)."""
    mean, std = state.model.preprocess_cfg.mean, state.model.preprocess_cfg.std
    items = state.dataset.__getitems__([0, 3, 5])
    samples = [items[k] for k in range(len(items))]  # the default-collate view: dense CPU masks
    got = prepare_batch(collate_clips(items), torch.device("cpu"), mean, std)
    want_frames = torch.stack([normalize_frames(s["frames"], mean, std) for s in samples])
    want_masks = torch.stack([s["masks"] for s in samples]).float()
    assert got.frames.is_contiguous()
    assert torch.allclose(got.frames, want_frames, rtol=0, atol=1e-6)
    assert torch.equal(got.masks, want_masks) and got.masks.sum() > 0  # the corpus has person boxes
    assert torch.equal(got.tokens, torch.stack([s["tokens"] for s in samples]))
    assert torch.equal(got.sentiment, torch.stack([s["sentiment"] for s in samples]).float())


def test_frees_nothing_early():
    """While the consumer holds batch k, its host batch and device tensors live; the
    batch fetched ahead lives in the prefetcher; once the consumer lets go of k and
    moves on, k is gone (the prefetcher keeps no past batch)."""
    source = _source(4)
    seen: list[weakref.ref] = []

    def tracked():
        for b in source:
            seen.append(weakref.ref(b["frames"]))
            yield b

    pre = DevicePrefetcher(tracked(), "cpu", MEAN, STD, ahead=True)
    first = next(pre)
    assert len(seen) == 2  # batch 1 fetched ahead
    assert first.batch["frames"] is seen[0]()  # the loader's own tensors, not copies
    gc.collect()
    assert seen[1]() is not None  # the batch ahead: held by the prefetcher
    frames_ref = weakref.ref(first.frames)
    second = next(pre)
    gc.collect()
    assert seen[0]() is not None and frames_ref() is not None  # still held by the consumer
    assert second.batch["frames"] is seen[1]()
    del first
    gc.collect()
    assert seen[0]() is None and frames_ref() is None  # the consumer moved on: freed
    rest = list(pre)
    assert [int(b.batch["index"][0]) for b in rest] == [4, 6]
    pre.close()


@pytest.mark.parametrize("ahead", [False, True])
def test_a_loader_error_comes_with_its_batch(ahead):
    pre = DevicePrefetcher(_source(5, fail_at=3), "cpu", MEAN, STD, ahead=ahead)
    got = [next(pre).batch["index"][0].item() for _ in range(3)]  # fetched ahead, raised only now
    assert got == [0, 2, 4]
    with pytest.raises(OSError, match="batch 3"):
        next(pre)


def test_prepared_masks_are_the_rectangles():
    batch = next(_source(1))
    got = prepare_batch(batch, torch.device("cpu"), MEAN, STD)
    want = torch.zeros(2, 2, 8, 8)
    want[0, 1, 1:5, 2:7] = 1
    want[1, 0, 0:8, 0:3] = 1
    assert torch.equal(got.masks, want)
    m = torch.tensor(MEAN).view(3, 1, 1)
    s = torch.tensor(STD).view(3, 1, 1)
    assert torch.allclose(got.frames, (batch["frames"].float() / 255 - m) / s)
