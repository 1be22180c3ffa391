"""Manifests can no longer be lost or silently wrong: rebuilt only from every done
video, a shrinking rebuild refused unless forced, the last N generations kept with
list and rollback, and sentiment scores and frame ranges validated on write and read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from emotionclip.core.catalog import CatalogError, ManifestParams, load_catalog
from emotionclip.core.io import atomic_write_parquet, read_parquet
from emotionclip.core.manifest_store import (
    GENERATION_FILE, MANIFEST_FILE, ManifestShrinkError, list_generations, manifest_info, read_manifests, rollback,
    write_manifests,
)
from emotionclip.core.schemas import CLIP, EMOTIONS, SchemaError, score_problems
from emotionclip.stages.manifests import build_manifests
from emotionclip.stages.registry import done_video_ids, list_video_ids
from emotionclip.stages.chain import run_video
from training_data import write_frame_store

# What the good manifests were built with: the tiny random emotion model scores every
# sentence about 1/7 neutral and the sample sentences are short, so the paper's filter
# would keep nothing.
GOOD = {"stages.filter.max_neutral": 1.0, "stages.filter.min_duration_s": 0.0, "stages.filter.min_frames": 1}
GOOD_SETS = [a for k, v in GOOD.items() for a in ("--set", f"{k}={v}")]


# ---------------------------------------------------------------- helpers


def clip(video_id: str, i: int, *, start: float = 1.0, end: float = 5.0, **scores: float) -> dict:
    """A clip the default filter keeps; `scores` override logit_/prob_ columns."""
    row = {"clip_id": f"{video_id}:{i}", "video_id": video_id, "sentence_idx": i, "text": "Oh no, not again!",
           "start_s": start, "end_s": end, "frame_start": int(np.ceil(start * 8)), "frame_end": int(np.floor(end * 8)),
           "neutral": 0.01, "person_frac": 1.0, "boxes": []}
    for k, e in enumerate(EMOTIONS):
        row[f"logit_{e}"] = float(k)
        row[f"prob_{e}"] = 0.01 if e == "neutral" else 0.99 / 6
    row.update(scores)
    return row


def clips_df(rows: list[dict]) -> pd.DataFrame:
    return pa.Table.from_pylist(rows, schema=CLIP).to_pandas()


def some_clips(n: int, video_id: str = "a") -> pd.DataFrame:
    return clips_df([clip(video_id, i) for i in range(n)])


def generations_on_disk(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith("v-"))


def cli(*args: str):
    from emotionclip.cli import app

    return CliRunner().invoke(app, list(args))


# ------------------------------------------- a data root processed by the real stages


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    """Three imported sample videos, two of them through every per-video stage (tiny
    models), and good manifests built from those two."""
    from emotionclip.sample import make_sample_corpus
    from emotionclip.stages.download import import_local_folder

    tmp = tmp_path_factory.mktemp("safety")
    make_sample_corpus(tmp / "corpus", n_videos=3, duration_s=12.0)
    cat = load_catalog(profile="tiny", data_root=str(tmp / "data"), overrides=GOOD)
    assert import_local_folder(cat, tmp / "corpus").video_ids == ["sample_00", "sample_01", "sample_02"]
    for vid in ("sample_00", "sample_01"):
        run_video(cat, vid)
    return cat


@pytest.fixture
def good(processed):
    """The processed data root with freshly built good manifests (older ones removed)."""
    cat = processed
    shutil.rmtree(cat.artifact("manifests"), ignore_errors=True)
    counts = build_manifests(cat, done_video_ids(cat))
    assert counts["kept"] > 0 and counts["videos_kept"] == 2, counts
    return cat, counts, read_manifests(cat.artifact("manifests")), manifest_info(cat.artifact("manifests"))


def test_done_video_ids_are_the_videos_with_up_to_date_clips(processed):
    assert list_video_ids(processed) == ["sample_00", "sample_01", "sample_02"]
    assert done_video_ids(processed) == ["sample_00", "sample_01"]  # sample_02 was never processed
    # Built with other frame parameters, no video's clips are up to date.
    other = load_catalog(profile="tiny", data_root=processed.data_root, overrides={"stages.frames.fps": 4})
    assert done_video_ids(other) == []


def test_stage_manifests_refuses_to_replace_good_manifests_with_empty_ones(good):
    cat, counts, before, info = good
    out = Path(cat.artifact("manifests"))
    ok = cli("stage", "manifests", "--data-root", cat.data_root, "--profile", "tiny", *GOOD_SETS)
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["kept"] == counts["kept"]
    current = manifest_info(out)["generation"]
    n_generations = len(generations_on_disk(out))
    # --set values other than those the clips were built with: no video is done, so
    # the rebuild would be empty. Twice, which used to delete the good manifests.
    for _ in range(2):
        bad = cli("stage", "manifests", "--data-root", cat.data_root, "--profile", "tiny", *GOOD_SETS,
                  "--set", "stages.frames.fps=4")
        assert bad.exit_code == 2, bad.output
        assert bad.stderr.count("\n") == 1 and "refusing to shrink the manifests" in bad.stderr
        assert f"from {counts['kept']} to 0 clips" in bad.stderr and "--force" in bad.stderr
    assert manifest_info(out)["generation"] == current
    assert len(generations_on_disk(out)) == n_generations
    pd.testing.assert_frame_equal(read_manifests(out), before)


def test_stage_manifests_no_longer_takes_a_video_id(good):
    cat, _, before, info = good
    res = cli("stage", "manifests", "--data-root", cat.data_root, "--profile", "tiny", *GOOD_SETS,
              "--video-id", "sample_0")  # a typo
    assert res.exit_code == 2 and "--video-id is not accepted" in res.stderr
    assert manifest_info(cat.artifact("manifests"))["generation"] == info["generation"]
    pd.testing.assert_frame_equal(read_manifests(cat.artifact("manifests")), before)


def test_forced_shrink_then_rollback_restores_the_good_generation(good):
    cat, counts, before, info = good
    out = cat.artifact("manifests")
    other = load_catalog(profile="tiny", data_root=cat.data_root, overrides={**GOOD, "stages.frames.fps": 4})
    with pytest.raises(ManifestShrinkError, match=r"to 0 clips \(to zero"):
        build_manifests(other, done_video_ids(other))
    forced = cli("stage", "manifests", "--data-root", cat.data_root, "--profile", "tiny", *GOOD_SETS,
                 "--set", "stages.frames.fps=4", "--force")
    assert forced.exit_code == 0, forced.output
    assert json.loads(forced.stdout)["kept"] == 0 and manifest_info(out)["n_clips"] == 0

    back = cli("manifests", "rollback", "--data-root", cat.data_root)
    assert back.exit_code == 0, back.output
    assert json.loads(back.stdout)["generation"] == info["generation"]
    restored = manifest_info(out)
    assert restored == info  # counts, fingerprint, shards: the good generation's own pointer
    pd.testing.assert_frame_equal(read_manifests(out), before)


def test_a_rebuild_losing_too_large_a_fraction_is_refused_unless_forced(tmp_path):
    out = tmp_path / "m"
    write_manifests(some_clips(10), out, max_shrink_fraction=0.5)
    write_manifests(some_clips(5), out, max_shrink_fraction=0.5)  # exactly half: allowed
    with pytest.raises(ManifestShrinkError, match=r"from 5 to 2 clips \(by 60%, more than max_shrink_fraction=0.5") as e:
        write_manifests(some_clips(2), out, max_shrink_fraction=0.5)
    assert (e.value.previous, e.value.new) == (5, 2) and isinstance(e.value, ValueError)
    assert manifest_info(out)["n_clips"] == 5 and len(generations_on_disk(out)) == 2  # nothing written
    write_manifests(some_clips(2), out, max_shrink_fraction=0.5, force=True)
    assert manifest_info(out)["n_clips"] == 2
    # Even with no fraction limit, emptying non-empty manifests needs force.
    with pytest.raises(ManifestShrinkError, match="to zero"):
        write_manifests(CLIP.empty_table(), out, max_shrink_fraction=None)
    write_manifests(CLIP.empty_table(), out, force=True)
    write_manifests(CLIP.empty_table(), out)  # empty after empty changes nothing


def test_the_guards_are_catalog_values(tmp_path):
    assert (ManifestParams().max_shrink_fraction, ManifestParams().keep_generations) == (0.5, 5)
    cat = load_catalog(profile="tiny", data_root=str(tmp_path))
    assert (cat.stages.manifests.max_shrink_fraction, cat.stages.manifests.keep_generations) == (0.5, 5)
    with pytest.raises(CatalogError, match="stages.manifests.keep_generations"):
        load_catalog(profile="tiny", overrides={"stages.manifests.keep_generations": 1})
    with pytest.raises(CatalogError, match="stages.manifests.max_shrink_fraction"):
        load_catalog(profile="tiny", overrides={"stages.manifests.max_shrink_fraction": 1.5})


def test_build_manifests_keeps_the_catalogs_number_of_generations(tmp_path):
    cat = load_catalog(profile="tiny", data_root=str(tmp_path / "data"),
                       overrides={"stages.manifests.keep_generations": 3})
    atomic_write_parquet(cat.artifact("clips", "v1"), pa.Table.from_pylist([clip("v1", i) for i in range(4)], schema=CLIP))
    write_frame_store(cat.artifact("frames", "v1"), 100)
    for _ in range(5):
        build_manifests(cat, ["v1"])
    assert len(generations_on_disk(Path(cat.artifact("manifests")))) == 3


def test_the_last_generations_are_kept_and_listed(tmp_path):
    out = tmp_path / "m"
    for n in range(1, 8):
        write_manifests(some_clips(n), out, keep_generations=5, fingerprint=f"fp{n}")
    gens = list_generations(out)
    assert len(gens) == 5 == len(generations_on_disk(out))
    assert [g["n_clips"] for g in gens] == [7, 6, 5, 4, 3]  # newest first
    assert [g["current"] for g in gens] == [True, False, False, False, False]
    assert all(g["restorable"] for g in gens) and gens[0]["fingerprint"] == "fp7"
    pointer = json.loads((out / MANIFEST_FILE).read_text())
    assert json.loads((out / gens[0]["generation"] / GENERATION_FILE).read_text()) == pointer


def test_rollback_goes_to_the_previous_generation_or_a_named_one(tmp_path):
    out = tmp_path / "m"
    for n in (1, 2, 3):
        write_manifests(some_clips(n), out, keep_generations=3)
    g3, g2, g1 = (g["generation"] for g in list_generations(out))
    assert rollback(out)["generation"] == g2 and len(read_manifests(out)) == 2
    assert rollback(out)["generation"] == g1 and manifest_info(out)["n_clips"] == 1
    with pytest.raises(ValueError, match=f"no older restorable generation than {g1}"):
        rollback(out)
    assert rollback(out, g3)["n_clips"] == 3 and len(read_manifests(out)) == 3
    with pytest.raises(ValueError, match="no generation 'v-nope'"):
        rollback(out, "v-nope")
    # The generation that is current after a rollback survives later writes, however old.
    rollback(out, g1)
    write_manifests(some_clips(1), out, keep_generations=2)
    assert g1 in generations_on_disk(out)
    # A generation whose record is gone cannot be restored.
    (out / g1 / GENERATION_FILE).unlink()
    with pytest.raises(ValueError, match="cannot restore"):
        rollback(out, g1)


def test_manifests_cli_lists_and_rolls_back(tmp_path):
    root = tmp_path / "data"
    out = root / "manifests"
    write_manifests(some_clips(4), out)
    write_manifests(some_clips(3), out)
    listed = cli("manifests", "list", "--data-root", str(root))
    assert listed.exit_code == 0, listed.output
    gens = json.loads(listed.stdout)
    assert [(g["n_clips"], g["current"]) for g in gens] == [(3, True), (4, False)]
    back = cli("manifests", "rollback", gens[1]["generation"], "--data-root", str(root))
    assert back.exit_code == 0 and json.loads(back.stdout)["n_clips"] == 4
    assert len(read_manifests(out)) == 4
    bad = cli("manifests", "rollback", "v-nope", "--data-root", str(root))
    assert bad.exit_code == 2 and bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1


@pytest.mark.slow
def test_the_flow_builds_manifests_from_every_done_video(tmp_path):
    """A run over a folder of one new video adds it to the manifests instead of
    replacing them with it."""
    from emotionclip.sample import make_sample_corpus
    from flows.build_tv_dataset import build_tv_dataset

    first, second = tmp_path / "first", tmp_path / "second"
    make_sample_corpus(first, n_videos=3, duration_s=12.0)
    second.mkdir()
    for p in first.glob("sample_02.*"):
        p.rename(second / p.name)
    root = tmp_path / "data"
    build_tv_dataset(source="folder", folder=str(first), data_root=str(root), overrides=GOOD)
    assert sorted(read_manifests(root / "manifests")["video_id"].unique()) == ["sample_00", "sample_01"]
    result = build_tv_dataset(source="folder", folder=str(second), data_root=str(root), overrides=GOOD)
    assert result["processed"] == 1
    assert sorted(read_manifests(root / "manifests")["video_id"].unique()) == ["sample_00", "sample_01", "sample_02"]


# ------------------------------------------------ sentiment scores and frame ranges


def test_score_problems_finds_nan_inf_and_probabilities_that_do_not_sum_to_one():
    rows = [
        clip("a", 0),
        clip("a", 1, logit_joy=float("nan")),
        clip("a", 2, prob_fear=float("inf")),
        clip("a", 3, prob_anger=0.99 / 6 - 0.1),  # sums to 0.9
        clip("a", 4, prob_anger=0.99 / 6 + 5e-4),  # within the 1e-3 tolerance
        clip("a", 5, logit_anger=None),  # a null is not a score
    ]
    problems = score_problems(pa.Table.from_pylist(rows, schema=CLIP))
    assert problems[0] is None and problems[4] is None
    assert "'logit_joy' is nan" in problems[1] and "'prob_fear' is inf" in problems[2]
    assert "sum to 0.9" in problems[3] and "'logit_anger' is nan" in problems[5]
    assert list(score_problems(clips_df(rows)) == None) == list(problems == None)  # noqa: E711


def test_write_manifests_refuses_invalid_scores_and_leaves_the_current_set(tmp_path):
    out = tmp_path / "m"
    write_manifests(some_clips(3), out)
    bad = clips_df([clip("a", 0), clip("b", 7, logit_sadness=float("-inf"))])
    with pytest.raises(SchemaError, match=r"'logit_sadness' is -inf for clip video_id='b' sentence_idx=7"):
        write_manifests(bad, out)
    assert manifest_info(out)["n_clips"] == 3 and len(generations_on_disk(out)) == 1


@pytest.mark.parametrize("bad,column", [
    ({"logit_joy": float("nan")}, "'logit_joy' is nan"),
    ({"prob_surprise": float("inf")}, "'prob_surprise' is inf"),
    ({"prob_anger": 0.5}, "prob_\\* sum to"),
])
def test_read_manifests_names_the_shard_the_column_and_the_first_bad_clip(tmp_path, bad, column):
    rows = [clip("a", 0), clip("a", 2, **bad), clip("b", 1, **bad)]
    pq.write_table(pa.Table.from_pylist(rows, schema=CLIP), tmp_path / "clips-00000.parquet")
    with pytest.raises(SchemaError, match=rf"manifest shard .*clips-00000\.parquet: .*{column}.* "
                                          r"for clip video_id='a' sentence_idx=2 \(2 invalid row"):
        read_manifests(tmp_path)


def test_build_manifests_rejects_bad_scores_and_frames_outside_the_store(tmp_path):
    cat = load_catalog(profile="tiny", data_root=str(tmp_path / "data"))
    atomic_write_parquet(cat.artifact("clips", "v1"), pa.Table.from_pylist([
        clip("v1", 0),
        clip("v1", 1, logit_joy=float("nan")),
        clip("v1", 2, prob_fear=float("inf")),
        clip("v1", 3, start=6.0, end=9.0),  # frames 48..72, the store has 60
    ], schema=CLIP))
    write_frame_store(cat.artifact("frames", "v1"), 60)
    atomic_write_parquet(cat.artifact("clips", "v2"), pa.Table.from_pylist([clip("v2", 0)], schema=CLIP))
    counts = build_manifests(cat, ["v1", "v2"])  # v2 has no frame store
    assert counts["kept"] == 1 and counts["rejected_invalid_scores"] == 2 and counts["rejected_frames_out_of_range"] == 1
    assert read_manifests(cat.artifact("manifests"))["clip_id"].tolist() == ["v1:0"]
    rejected = read_parquet(cat.artifact("rejected"))
    assert dict(zip(rejected["clip_id"], rejected["reason"])) == {
        "v1:1": "invalid_scores", "v1:2": "invalid_scores", "v1:3": "frames_out_of_range"}
    failures = read_parquet(cat.artifact("failures"))
    assert failures["video_id"].tolist() == ["v2"] and "frames not found at" in failures.loc[0, "error"]
