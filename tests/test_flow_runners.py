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


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """One short sample video with captions, made once for the three runners."""
    from emotionclip.sample import make_sample_corpus

    folder = tmp_path_factory.mktemp("corpus")
    make_sample_corpus(folder, n_videos=1, duration_s=12.0)
    return folder


def _run(flow, corpus, root, runner):
    result = flow(source="folder", folder=str(corpus), data_root=str(root), overrides=OVERRIDES,
                  task_runner=runner, max_workers=2)
    assert result["failures"] == 0 and result["processed"] == 1, result
    return read_manifests(root / "manifests").sort_values("clip_id").reset_index(drop=True)


def test_threads_processes_and_dask_agree(flow, corpus, tmp_path):
    import pandas as pd

    threads = _run(flow, corpus, tmp_path / "threads", "threads")
    assert len(threads) > 0
    for runner in ("processes", "dask"):
        pd.testing.assert_frame_equal(threads, _run(flow, corpus, tmp_path / runner, runner))


def test_unknown_runner_is_a_clear_error():
    from flows.build_tv_dataset import make_task_runner

    with pytest.raises(ValueError, match="unknown task runner"):
        make_task_runner("gpu-cluster")
