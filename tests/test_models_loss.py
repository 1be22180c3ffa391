"""Sentiment-guided loss (SNCE): CLIP loss at beta=0, KL direction, duplicates, DDP gathering."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from emotionclip.models import SentimentGuidedLoss, gather_features, pairwise_kl, sentiment_weights


def _batch(n=6, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    v = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    t = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    s = torch.randn(n, 7, generator=g) * 2
    return v, t, s


def _kl(p, q):
    return float((p * (p.log() - q.log())).sum())


def test_beta_zero_equals_openclip_clip_loss():
    v, t, s = _batch()
    scale = torch.tensor(1 / 0.07)
    ours = SentimentGuidedLoss(beta=0.0)(v, t, s, scale)
    ref = ClipLoss()(v, t, scale)
    assert torch.allclose(ours, ref, atol=1e-6)


def test_weights_follow_kl_direction_by_hand():
    s = torch.tensor([[2.0, 0.1, 0, 0, 0, 0, 0], [0.0, 0, 0, 3.0, 0, 0, 1.0], [0.5, 0.5, 0.5, 0, 0, 0, 0]])
    p = s.softmax(-1)
    w_code = sentiment_weights(s, beta=10.0, kl_direction="code")
    w_paper = sentiment_weights(s, beta=10.0, kl_direction="paper")
    for i in range(3):
        assert w_code[i, i] == 0 and w_paper[i, i] == 0
        for j in range(3):
            if i != j:
                # code: row i, column j uses KL(s_j || s_i); paper: KL(s_i || s_j)
                assert w_code[i, j].item() == pytest.approx(10.0 / _kl(p[j], p[i]), rel=1e-4)
                assert w_paper[i, j].item() == pytest.approx(10.0 / _kl(p[i], p[j]), rel=1e-4)
    assert not torch.allclose(w_code, w_paper)  # KL is asymmetric: the choice matters
    assert torch.allclose(pairwise_kl(s, "paper"), pairwise_kl(s, "code").T)


def test_loss_by_hand_same_weights_both_directions():
    v, t, s = _batch(n=4)
    scale = 5.0
    loss = SentimentGuidedLoss(beta=2.0, kl_direction="paper")(v, t, s, scale)
    w = sentiment_weights(s, 2.0, "paper")
    lv = scale * v @ t.T - w
    lt = scale * t @ v.T - w  # the same w, not its transpose (authors' code)
    y = torch.arange(4)
    expected = (F.cross_entropy(lv, y) + F.cross_entropy(lt, y)) / 2
    assert torch.allclose(loss, expected, atol=1e-6)
    # and it differs from the plain CLIP loss
    assert not torch.allclose(loss, ClipLoss()(v, t, torch.tensor(scale)))


def test_duplicate_sentiments_remove_the_negative_without_nan():
    v, t, s = _batch(n=5)
    s[3] = s[1]  # identical distributions: KL = 0 -> infinite weight
    v.requires_grad_(True)
    t.requires_grad_(True)
    scale = torch.tensor(10.0, requires_grad=True)
    w = sentiment_weights(s, 10.0)
    assert torch.isinf(w[1, 3]) and torch.isinf(w[3, 1])
    assert torch.isfinite(w[0, 1]) and w[1, 1] == 0
    loss = SentimentGuidedLoss(beta=10.0)(v, t, s, scale)
    loss.backward()
    assert torch.isfinite(loss)
    for g in (v.grad, t.grad, scale.grad):
        assert torch.isfinite(g).all()
    # removing the negative == dropping column 3 from row 1 (and 1 from row 3)
    lv = scale.detach() * v.detach() @ t.detach().T - w
    lt = scale.detach() * t.detach() @ v.detach().T - w
    row1 = torch.cat([lv[1, :3], lv[1, 4:]])
    assert F.cross_entropy(lv[1:2], torch.tensor([1])).item() == pytest.approx(
        F.cross_entropy(row1[None], torch.tensor([1])).item(), rel=1e-6
    )
    assert torch.isfinite(lt).sum() == 25 - 2


def test_all_identical_sentiments_give_zero_loss_and_finite_grads():
    v, t, s = _batch(n=3)
    s[:] = s[0]
    v.requires_grad_(True)
    loss = SentimentGuidedLoss()(v, t, s, 10.0)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-6)  # every negative removed
    assert torch.isfinite(v.grad).all()


def test_bf16_features_and_autocast_are_finite():
    v, t, s = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = SentimentGuidedLoss()(v.bfloat16(), t.bfloat16(), s, torch.tensor(14.3))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_gather_features_is_a_noop_without_process_group():
    v, t, s = _batch()
    gv, gt, gs = gather_features(v, t, s)
    assert gv is v and gt is t and gs is s


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out: dict) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    v, t, s = _batch(n=6, seed=3)
    v.requires_grad_(True)
    sl = slice(rank * 3, rank * 3 + 3)
    lv, lt, ls = v[sl], t[sl], s[sl]
    gv, gt, gs = gather_features(lv, lt, ls)
    loss = SentimentGuidedLoss(beta=10.0)(gv, gt, gs, 10.0)
    loss.backward()
    out[rank] = (loss.item(), v.grad[sl].clone())
    dist.destroy_process_group()


def test_ddp_gathered_loss_equals_global_batch_loss():
    """Two gloo ranks with 3 samples each: the loss on gathered features equals the
    single-process loss on all 6, and each rank gets the gradient of its own slice."""
    v, t, s = _batch(n=6, seed=3)
    v.requires_grad_(True)
    full = SentimentGuidedLoss(beta=10.0)(v, t, s, 10.0)
    full.backward()
    manager = mp.Manager()
    out = manager.dict()
    # fork: the workers inherit the imported modules (spawn would re-import torch and open_clip)
    mp.start_processes(_ddp_worker, args=(2, _free_port(), out), nprocs=2, join=True, start_method="fork")
    for rank in range(2):
        loss, grad = out[rank]
        assert loss == pytest.approx(full.item(), rel=1e-6)
        assert torch.allclose(grad, v.grad[rank * 3 : rank * 3 + 3], atol=1e-6)
