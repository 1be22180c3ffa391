"""Gathering per-rank features for the contrastive loss under DDP."""

from __future__ import annotations

import torch
import torch.distributed as dist


def gather_features(
    *tensors: torch.Tensor, gather_with_grad: bool = False
) -> tuple[torch.Tensor, ...]:
    """All-gather each tensor along dim 0 across ranks, in rank order.

    Without an initialised process group (or with one rank) the tensors come back
    unchanged. With `gather_with_grad=False` (the OpenCLIP default) the other ranks'
    slices carry no gradient and this rank's slice is the original tensor, so the
    loss on the gathered batch gives gradients for the local samples. With
    `gather_with_grad=True` gradients flow through all slices (torch.distributed.nn).
    Every rank must pass tensors of the same shape (drop_last in the sampler).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tuple(tensors)
    world, rank = dist.get_world_size(), dist.get_rank()
    out = []
    for x in tensors:
        if gather_with_grad:
            from torch.distributed.nn import all_gather  # autograd-aware all_gather

            out.append(torch.cat(all_gather(x), dim=0))
        else:
            parts = [torch.empty_like(x) for _ in range(world)]
            dist.all_gather(parts, x.contiguous())
            parts[rank] = x
            out.append(torch.cat(parts, dim=0))
    return tuple(out)
