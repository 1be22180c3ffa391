"""DDP set-up from torchrun's environment (the loss's feature gather is
`emotionclip.models.distributed.gather_features`).

torchrun (and any launcher that sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/
MASTER_PORT, multi-node included) starts one process per device; `gloo` on CPU,
`nccl` on GPU. Ranks are global (`RANK`: data shard, seeds, who writes);
`LOCAL_RANK` only picks this process's GPU on its node.

A `torch.distributed.TCPStore` server listens on every interface whatever host
it is given (torch 2.14). The stores this project hosts (`host_store`: the
launcher's rendezvous store, rank 0's store for the workers) listen on one
address only, through a socket bound here and handed over (`master_listen_fd`).
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(requested: str, local_rank: int) -> torch.device:
    """"auto": this rank's GPU, else the CPU. A bare "cuda" also means this rank's
    GPU (torch.cuda.set_device needs an index; found on the first GPU run)."""
    if requested == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(requested)
    if dev.type == "cuda" and dev.index is None:
        return torch.device("cuda", local_rank)
    return dev


def listen_socket(host: str, port: int) -> socket.socket:
    """A TCP socket listening on `host:port` only (port 0: a free one). OSError
    when `host` is no address of this machine or the port is taken."""
    err: OSError | None = None
    for family, kind, proto, _, addr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(128)
            return sock
        except OSError as e:
            sock.close()
            err = e
    raise err or OSError(f"cannot listen on {host}:{port}")


def host_store(host: str, port: int, *, world_size: int | None = None,
               timeout: datetime.timedelta = datetime.timedelta(minutes=30)) -> dist.TCPStore:
    """A TCPStore server on `host:port` (0: a free port; `store.port` says which)
    that listens on that address only. `world_size`: wait for that many clients."""
    sock = listen_socket(host, port)
    bound = sock.getsockname()[1]
    # the store's libuv loop takes the descriptor over: detach so Python never closes it
    fd = sock.detach()
    return dist.TCPStore(host, bound, world_size=world_size, is_master=True, multi_tenant=True,
                         timeout=timeout, wait_for_workers=world_size is not None, master_listen_fd=fd)


def _worker_store(rank: int, world: int, timeout: datetime.timedelta) -> dist.Store:
    """The store the ranks' process group starts from, at MASTER_ADDR:MASTER_PORT:
    rank 0 hosts it on that address only (what torch's env:// would host on every
    interface), the others connect."""
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    if rank == 0:
        return host_store(host, port, world_size=world, timeout=timeout)
    return dist.TCPStore(host, port, world_size=world, is_master=False, timeout=timeout)


def init_distributed(device: str = "auto", timeout_s: float | None = None) -> DistInfo:
    """Join the process group when torchrun's variables say there are several ranks.
    `timeout_s`: how long collectives wait (the other ranks wait for rank 0's probe).

    Under torchrun's shared agent store (`TORCHELASTIC_USE_AGENT_STORE=True`, plain
    torchrun) the group starts from it (env://); otherwise (`emotionclip train`,
    whose launcher turns that store off, or a launcher that only sets MASTER_ADDR/
    MASTER_PORT) rank 0 hosts the store on MASTER_ADDR only."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        timeout = datetime.timedelta(seconds=timeout_s) if timeout_s else None
        kw = {"timeout": timeout} if timeout else {}
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" or "MASTER_ADDR" not in os.environ:
            dist.init_process_group(backend=backend, rank=rank, world_size=world, **kw)
        else:
            store = _worker_store(rank, world, timeout or datetime.timedelta(minutes=30))
            dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world, **kw)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def all_gather_objects(obj: object) -> list[object]:
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def check_same_on_all_ranks(value: object, what: str, hint: str = "") -> None:
    """Raise `TrainingInputError` on every rank when the ranks hold different `value`s
    (e.g. the checkpoint each resumes from: nodes that do not share out_dir)."""
    values = all_gather_objects(value)
    if any(v != values[0] for v in values[1:]):
        from emotionclip.training.errors import TrainingInputError

        listed = ", ".join(f"rank {r}: {v}" for r, v in enumerate(values))
        raise TrainingInputError(f"the ranks disagree on {what} ({listed}){'; ' + hint if hint else ''}")


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
