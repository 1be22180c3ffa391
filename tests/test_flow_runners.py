"""The same flow on each task runner (threads, processes, Dask) gives the same manifests."""

from __future__ import annotations

import pytest

from emotionclip.core.manifest_store import read_manifests

pytestmark = pytest.mark.slow

OVERRIDES = {"stages.filter.max_neutral": 0.5, "stages.humans.imgsz": 320}


@pytest.fixture(scope="module")
def flow():
    from flows.build_tv_dataset import build_tv_dataset

    return build_tv_dataset


def _run(flow, root, runner):
    result = flow(source="sample", data_root=str(root), max_videos=1, overrides=OVERRIDES,
                  task_runner=runner, max_workers=2)
    assert result["failures"] == 0 and result["processed"] == 1, result
    return read_manifests(root / "manifests").sort_values("clip_id").reset_index(drop=True)


def test_threads_processes_and_dask_agree(flow, tmp_path):
    import pandas as pd

    threads = _run(flow, tmp_path / "threads", "threads")
    assert len(threads) > 0
    for runner in ("processes", "dask"):
        pd.testing.assert_frame_equal(threads, _run(flow, tmp_path / runner, runner))


def test_unknown_runner_is_a_clear_error():
    from flows.build_tv_dataset import make_task_runner

    with pytest.raises(ValueError, match="unknown task runner"):
        make_task_runner("gpu-cluster")
