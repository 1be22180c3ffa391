"""Process entry point for torchrun, and the one-device / several-device / several-node switch.

    torchrun --nproc_per_node 8 -m emotionclip.training.launch --config run/train_config.json

The config file is a `TrainConfig` as JSON (`config.write_config`, re-exported here):
`emotionclip train` and the `pretrain` flow write it into the output folder and launch
torchrun (`run_training`); a run in one process writes it too (`loop.train`).

Several nodes: the same `emotionclip train ... --nnodes N --node-rank R
--rdzv-endpoint HOST:PORT` on every node (HOST: node 0's address). That maps onto
`python -m torch.distributed.run --nnodes N --nproc-per-node P --rdzv-backend c10d
--rdzv-endpoint HOST:PORT --rdzv-id ID --local-addr ADDR --rdzv-conf is_host=false,...`
(`torchrun_command`), with two changes to what plain torchrun does, both so that no
listener binds every interface (a TCPStore server does, whatever host it is given):

- node 0's launcher hosts the c10d rendezvous store on HOST:PORT itself, bound to
  that address only (`distributed.host_store`), and every torchrun joins it as a
  client (`is_host=false`); the other nodes wait for it first (nodes started
  minutes apart, e.g. flow runs on a work pool, still meet);
- torchrun's shared store is off (`TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`): rank 0
  hosts the workers' store on its node's `--local-addr` only
  (`distributed.init_distributed`), and gloo uses that address's interface
  (`GLOO_SOCKET_IFNAME`, unless set).

Global ranks come from the rendezvous (torchrun's c10d backend orders the nodes
itself; `--node-rank` only says which node hosts the rendezvous): the data shard,
seeds and RNG streams of a rank depend only on its global rank, so N nodes x P
processes train exactly as one node with N*P processes. Rank 0 writes the
checkpoints, so out_dir must be one folder that every node sees (a shared mount).
One node with `--nproc P` > 1 runs the same way on 127.0.0.1 with a free port.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import logging
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

# CONFIG_FILE and write_config re-exported: the torchrun side of the config file lives here
from emotionclip.training.config import CONFIG_FILE, TrainConfig, read_config, write_config  # noqa: F401

if TYPE_CHECKING:
    from emotionclip.training.state import TrainResult

log = logging.getLogger(__name__)

DEFAULT_RDZV_ID = "emotionclip"
DEFAULT_RDZV_PORT = 29400  # torchrun's default c10d port
# How long a node waits for the others (and node 0's rendezvous store) to come up:
# flow runs of a work pool may start minutes apart.
DEFAULT_RDZV_TIMEOUT_S = 1800


@dataclass(frozen=True)
class RunOutcome:
    """How `run_training` ended. `returncode`: 0 = finished (in this process always 0:
    a failure raises); `result`: the TrainResult of an in-process run, None under
    torchrun (the ranks' results stay in their processes; the checkpoints and
    metrics files under out_dir tell what they did)."""

    returncode: int
    result: TrainResult | None = None

    @property
    def ok(self) -> bool:
        return self.returncode == 0


@dataclass(frozen=True)
class Rendezvous:
    """Where the nodes of a run meet (torch's c10d rendezvous).

    `nnodes`: nodes of the run; `node_rank`: this node's (0 hosts the rendezvous
    store); `endpoint`: HOST[:PORT] of node 0 that every node reaches, None for one
    node (127.0.0.1, a free port); `run_id`: the rendezvous id, the same on every
    node; `local_addr`: the address of this node the others reach (rank 0's store,
    gloo), None = the one this machine routes to `endpoint` from; `timeout_s`: how
    long to wait for the other nodes."""

    nnodes: int = 1
    node_rank: int = 0
    endpoint: str | None = None
    run_id: str = DEFAULT_RDZV_ID
    local_addr: str | None = None
    timeout_s: int = DEFAULT_RDZV_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.nnodes < 1:
            raise ValueError(f"--nnodes must be >= 1, got {self.nnodes}")
        if not 0 <= self.node_rank < self.nnodes:
            raise ValueError(f"--node-rank must be in [0, {self.nnodes}), got {self.node_rank}")
        if self.nnodes > 1 and not self.endpoint:
            raise ValueError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT (node 0's address, the same on every node)")
        if self.endpoint:
            split_endpoint(self.endpoint)  # a malformed one fails here, on every node alike
        if self.timeout_s < 1:
            raise ValueError(f"rendezvous timeout must be >= 1 s, got {self.timeout_s}")

    @property
    def multi_node(self) -> bool:
        return self.nnodes > 1


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """HOST[:PORT] (IPv6 in brackets) -> (host, port); port defaults to torchrun's 29400."""
    text = endpoint.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, ""
    if not host:
        raise ValueError(f"--rdzv-endpoint {endpoint!r}: no host")
    try:
        number = int(port) if port else DEFAULT_RDZV_PORT
    except ValueError:
        raise ValueError(f"--rdzv-endpoint {endpoint!r}: port {port!r} is not a number") from None
    if not 0 < number < 65536:
        raise ValueError(f"--rdzv-endpoint {endpoint!r}: port {number} out of range")
    return host, number


def _join_endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def local_address_towards(host: str) -> str:
    """The address of this machine that packets to `host` leave from (a UDP connect
    sends nothing; the kernel only picks the route): what the other nodes reach."""
    family, _, _, _, addr = socket.getaddrinfo(host, DEFAULT_RDZV_PORT, type=socket.SOCK_DGRAM)[0]
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect(addr)
        return s.getsockname()[0]


def interface_of(address: str) -> str | None:
    """The network interface that holds `address` (for GLOO_SOCKET_IFNAME), or None."""
    import psutil

    for name, addrs in psutil.net_if_addrs().items():
        if any(a.address.split("%")[0] == address for a in addrs):
            return name
    return None


def torchrun_command(config_path: str | os.PathLike, nproc: int, rendezvous: Rendezvous | None = None,
                     local_addr: str | None = None) -> list[str]:
    """Argument list (never a shell string) for torchrun. Without `rendezvous`: a
    single-node `--standalone` launch (plain torchrun's stores). With it: c10d
    rendezvous at `rendezvous.endpoint` (whose store `rendezvous_store` hosts) as a
    client, this node's `local_addr` for rank 0's store."""
    head = [sys.executable, "-m", "torch.distributed.run"]
    tail = ["-m", "emotionclip.training.launch", "--config", str(config_path)]
    if rendezvous is None:
        return [*head, "--standalone", f"--nproc_per_node={int(nproc)}", *tail]
    if not rendezvous.endpoint:
        raise ValueError("torchrun_command needs the rendezvous endpoint (see rendezvous_store)")
    conf = f"is_host=false,join_timeout={rendezvous.timeout_s}"
    args = [*head, f"--nnodes={rendezvous.nnodes}", f"--nproc_per_node={int(nproc)}", "--rdzv-backend=c10d",
            f"--rdzv-endpoint={rendezvous.endpoint}", f"--rdzv-id={rendezvous.run_id}", f"--rdzv-conf={conf}",
            # a failed rank fails the run (the checkpoints resume it); no elastic restarts
            "--max-restarts=0"]
    if local_addr:
        args.append(f"--local-addr={local_addr}")
    return [*args, *tail]


@contextlib.contextmanager
def rendezvous_store(rendezvous: Rendezvous) -> Iterator[Rendezvous]:
    """Node 0: host the c10d rendezvous store on the endpoint's address only (one
    node: 127.0.0.1 and a free port) while the body runs. Other nodes: wait until
    node 0's store answers. Yields the rendezvous with its endpoint settled."""
    import torch.distributed as dist

    from emotionclip.training.distributed import host_store

    timeout = datetime.timedelta(seconds=rendezvous.timeout_s)
    if rendezvous.endpoint:
        host, port = split_endpoint(rendezvous.endpoint)
    else:
        host, port = "127.0.0.1", 0
    if rendezvous.node_rank == 0:
        try:
            store = host_store(host, port, timeout=timeout)
        except OSError as e:  # the user's to fix: one line (emotionclip.cli), not a traceback
            from emotionclip.training.errors import TrainingInputError

            raise TrainingInputError(f"--rdzv-endpoint {_join_endpoint(host, port)}: node 0 cannot listen there "
                                     f"({e.strerror or e}); run node 0 on the machine with that address, on a "
                                     "free port") from e
        settled = Rendezvous(rendezvous.nnodes, 0, _join_endpoint(host, store.port), rendezvous.run_id,
                             rendezvous.local_addr, rendezvous.timeout_s)
        try:
            yield settled
        finally:
            del store  # the server stops with its last reference
        return
    log.info("waiting for node 0's rendezvous at %s (up to %d s)", rendezvous.endpoint, rendezvous.timeout_s)
    try:
        # a client's constructor retries the connection until the timeout
        probe = dist.TCPStore(host, port, is_master=False, timeout=timeout, wait_for_workers=False)
    except (RuntimeError, OSError) as e:  # DistStoreError (a RuntimeError): no answer in time
        from emotionclip.training.errors import TrainingInputError

        raise TrainingInputError(f"--rdzv-endpoint {rendezvous.endpoint}: node 0 did not answer within "
                                 f"{rendezvous.timeout_s} s ({' '.join(str(e).split())[:200]}); start node 0 "
                                 "there with the same --nnodes and --rdzv-endpoint") from e
    del probe
    yield rendezvous


def run_training(config: TrainConfig, nproc: int = 1, env: dict[str, str] | None = None,
                 rendezvous: Rendezvous | None = None) -> RunOutcome:
    """Train in this process (one node, nproc <= 1; exceptions propagate) or under
    torchrun with `nproc` processes on this node, one of `rendezvous.nnodes` nodes
    (torchrun's exit code in the outcome)."""
    rdzv = rendezvous or Rendezvous()
    if nproc <= 1 and not rdzv.multi_node:
        from emotionclip.training.loop import train

        return RunOutcome(returncode=0, result=train(config))
    path = write_config(config)
    with rendezvous_store(rdzv) as settled:
        host, _ = split_endpoint(settled.endpoint or "")
        try:
            addr = settled.local_addr or local_address_towards(host)
        except OSError as e:  # an unresolvable host, no route
            from emotionclip.training.errors import TrainingInputError

            raise TrainingInputError(f"--rdzv-endpoint {settled.endpoint}: no route from this machine "
                                     f"({e.strerror or e}); pass --local-addr or fix the host") from e
        child_env = {**os.environ, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
        iface = interface_of(addr)
        if iface and "GLOO_SOCKET_IFNAME" not in child_env:
            child_env["GLOO_SOCKET_IFNAME"] = iface
        child_env.update(env or {})
        log.info("torchrun: node %d of %d, %d process(es), rendezvous %s, this node %s",
                 settled.node_rank, settled.nnodes, nproc, settled.endpoint, addr)
        proc = subprocess.run(torchrun_command(path, nproc, settled, addr), env=child_env)
    return RunOutcome(returncode=proc.returncode)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="EmotionCLIP pre-training worker (one per device).")
    parser.add_argument("--config", required=True, help="TrainConfig JSON file")
    args = parser.parse_args(argv)
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(level=logging.INFO if rank == "0" else logging.WARNING,
                        format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s")
    from emotionclip.training.distributed import cleanup
    from emotionclip.training.errors import TrainingInputError
    from emotionclip.training.loop import train

    try:
        result = train(read_config(args.config))
        logging.getLogger(__name__).info("finished at step %d, checkpoint %s", result.step, result.checkpoint)
    except TrainingInputError as e:  # the user's to fix: one line per rank, no traceback
        logging.getLogger(__name__).error("%s", e)
        return 2
    finally:
        cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
