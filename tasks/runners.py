"""How build-tv-dataset's work runs: the task runner of a batch (threads, processes or
Dask, local or an existing scheduler) and waiting for batch runs started on workers."""

from __future__ import annotations

import time
from typing import Any, Literal, Optional

from prefect import get_run_logger
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

RunnerKind = Literal["threads", "processes", "dask"]


def make_task_runner(kind: RunnerKind = "threads", max_workers: Optional[int] = None,
                     dask_address: Optional[str] = None):
    """threads (default), processes, or Dask (a local cluster, or an existing
    scheduler at `dask_address` so the same flow scales out to many machines)."""
    if kind == "threads":
        return ThreadPoolTaskRunner(max_workers=max_workers)
    if kind == "processes":
        return ProcessPoolTaskRunner(max_workers=max_workers)
    if kind == "dask":
        from prefect_dask import DaskTaskRunner

        if dask_address:
            return DaskTaskRunner(address=dask_address)
        kwargs = {"n_workers": max_workers} if max_workers else {}
        # Loopback only: Dask's dashboard defaults to all interfaces on :8787, an open
        # port on the network; port 0 also lets parallel runs each get a free port.
        return DaskTaskRunner(cluster_kwargs={
            "processes": True, "threads_per_worker": 1,
            "host": "127.0.0.1", "dashboard_address": "127.0.0.1:0", **kwargs,
        })
    raise ValueError(f"unknown task runner {kind!r}: threads, processes or dask")


def wait_for_flow_runs(ids: list[Any], poll_s: float = 2.0) -> dict[Any, Any]:
    """Block until every flow run in `ids` is final (a retrying one is not); their states."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    logger = get_run_logger()
    states: dict[Any, Any] = {}
    last_log = 0.0
    with get_client(sync_client=True) as client:
        while True:
            pending = [i for i in ids if i not in states]
            for k in range(0, len(pending), 200):
                for fr in client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=pending[k:k + 200]))):
                    if fr.state is not None and fr.state.is_final():
                        states[fr.id] = fr.state
            if len(states) == len(ids):
                return states
            if time.monotonic() - last_log > 60:
                logger.info("waiting for batch runs: %d of %d finished", len(states), len(ids))
                last_log = time.monotonic()
            time.sleep(poll_s)
