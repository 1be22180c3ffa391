"""Dataset card across runs: what the last run added, the totals, the growth plot run
by run (from the RUNS table), the videos per status with the reasons behind the failed
and excluded ones (from the VIDEOS table); deterministic; read from the data root."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from PIL import Image

from emotionclip.core.catalog import load_catalog
from emotionclip.core.io import atomic_write_parquet
from emotionclip.core.schemas import CLIP, EMOTIONS, RUNS, VIDEOS
from emotionclip.stages.card import N_REASONS, N_RUN_ROWS, write_card_from_disk, write_dataset_card
from emotionclip.stages.manifests import build_manifests
from training_data import write_frame_store

BLUE, GREEN = np.array([0x4C, 0x72, 0xB0]), np.array([0x55, 0xA8, 0x68])  # videos done, kept clips


def run_row(i: int, added: int, done: int, clips_added: int, clips_total: int, failed: int = 0, excluded: int = 0) -> dict:
    return {"run_id": f"run-{i}", "started": f"2024-03-{i:02d}T10:00:00+00:00", "finished": f"2024-03-{i:02d}T12:00:00+00:00",
            "source": "youtube", "videos_added": added, "videos_done": done, "videos_failed": failed,
            "videos_excluded": excluded, "clips_added": clips_added, "clips_total": clips_total}


RUN_ROWS = [run_row(1, 5, 4, 120, 120, failed=1), run_row(2, 3, 6, 60, 180, failed=2, excluded=1),
            run_row(3, 4, 9, 75, 255, failed=3, excluded=2)]


def video_row(vid: str, status: str, *, stage: str = "", error: str = "", transient: bool = False, reason: str = "") -> dict:
    return {"video_id": vid, "title": f"Title {vid}", "channel": "ch", "source": "youtube", "query": "tv series",
            "url": f"https://www.youtube.com/watch?v={vid}", "first_seen": "2024-03-01T10:00:00+00:00",
            "added_by_run": "run-1", "status": status, "failed_stage": stage, "error": error, "attempts": 1 if error else 0,
            "transient": transient, "excluded_reason": reason, "updated": "2024-03-03T12:00:00+00:00",
            "stages": json.dumps({"download": "done"}), "n_clips": 30 if status == "done" else 0}


VIDEO_ROWS = (
    [video_row(f"d{i}", "done") for i in range(9)]
    + [video_row("f1", "failed", stage="download", error="HTTP Error 404: Not Found"),
       video_row("f2", "failed", stage="download", error="HTTP Error 404: Not Found\nmore detail"),
       video_row("f3", "failed", stage="download", error="HTTP Error 429: Too Many Requests", transient=True)]
    + [video_row("x1", "excluded", reason="in a downstream dataset (BoLD)"),
       video_row("x2", "excluded", reason="in a downstream dataset (BoLD)")]
    + [video_row("p1", "pending")]
)


def runs_df(rows=RUN_ROWS) -> pd.DataFrame:
    return pa.Table.from_pylist(rows, schema=RUNS).to_pandas()


def videos_df(rows=VIDEO_ROWS) -> pd.DataFrame:
    return pa.Table.from_pylist(rows, schema=VIDEOS).to_pandas()


def clip(video_id: str, i: int, neutral: float) -> dict:
    start, end = 1.0 + 0.5 * i, 4.0 + 0.5 * i
    row = {"clip_id": f"{video_id}:{i}", "video_id": video_id, "sentence_idx": i, "text": "What a day!",
           "start_s": start, "end_s": end, "frame_start": int(np.ceil(start * 8)), "frame_end": int(np.floor(end * 8)),
           "neutral": neutral, "person_frac": 1.0, "boxes": []}
    for k, e in enumerate(EMOTIONS):
        row[f"logit_{e}"] = float(k)
        row[f"prob_{e}"] = neutral if e == "neutral" else (1 - neutral) / 6
    return row


@pytest.fixture(scope="module")
def card_inputs():
    """Kept and rejected clips as build_manifests makes them (no frame store needed for the card)."""
    table = pa.Table.from_pylist([clip("d0", i, 0.01 if i % 2 else 0.9) for i in range(6)], schema=CLIP)
    df = table.to_pandas()
    kept = df[df.neutral < 0.05].reset_index(drop=True)
    rejected = df[df.neutral >= 0.05].assign(reason="neutral").reset_index(drop=True)
    return kept, rejected


def card(tmp_path: Path, card_inputs, runs=None, videos=None, name: str = "card"):
    cat = load_catalog(profile="tiny", data_root=str(tmp_path / "data"))
    kept, rejected = card_inputs
    counts = {"videos": 9, "clips": 6, "kept": len(kept), "rejected": len(rejected)}
    return write_dataset_card(cat, tmp_path / name, counts, kept, rejected, [], "git test", runs=runs, videos=videos)


def colour_pixels(path, colour: np.ndarray) -> int:
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return int((np.abs(rgb - colour).sum(axis=2) < 40).sum())


def test_card_says_what_the_last_run_added_and_the_totals(tmp_path, card_inputs):
    c = card(tmp_path, card_inputs, runs_df(), videos_df())
    text = c.markdown
    assert "## Latest run" in text
    assert ("Run `run-3` (youtube, started 2024-03-03T10:00:00+00:00) added 4 videos and 75 kept clips. "
            "After it the dataset has 9 videos done and 255 kept clips in all; 3 videos failed and 2 were excluded.") in text
    assert "| run | id | started | source | videos added | videos done | clips added | clips total |" in text
    assert "| 1 | run-1 | 2024-03-01T10:00:00 | youtube | 5 | 4 | 120 | 120 |" in text
    assert "| 3 | run-3 | 2024-03-03T10:00:00 | youtube | 4 | 9 | 75 | 255 |" in text
    assert "![growth](plots/growth.png)" in text
    # The growth section comes before the clip-level sections and the plot is not listed twice.
    assert text.index("## Growth, run by run") < text.index("## Rejected clips by reason")
    assert text.count("plots/growth.png") == 1
    # The UI form embeds it in the same place, once.
    ui = c.ui_markdown
    assert ui.count("![growth](data:image/png;base64,") == 1 and "plots/growth.png" not in ui
    assert ui.index("## Growth, run by run") < ui.index("![growth](") < ui.index("## Rejected clips by reason")


def test_growth_plot_draws_videos_and_clips_per_run(tmp_path, card_inputs):
    c = card(tmp_path, card_inputs, runs_df(), videos_df())
    path = c.plots["growth"]
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (700, 500)
    assert colour_pixels(path, BLUE) > 200 and colour_pixels(path, GREEN) > 200
    # One run only still gets a plot.
    one = card(tmp_path, card_inputs, runs_df(RUN_ROWS[:1]), name="one")
    assert colour_pixels(one.plots["growth"], GREEN) > 50


def test_status_table_with_failure_and_exclusion_reasons(tmp_path, card_inputs):
    text = card(tmp_path, card_inputs, runs_df(), videos_df()).markdown
    for status, n in (("pending", 1), ("done", 9), ("failed", 3), ("excluded", 2)):
        assert f"| {status} | {n} |" in text
    assert "Why videos failed (3 videos):" in text
    # Grouped by the error's first line; most frequent first.
    assert ("| download | permanent | HTTP Error 404: Not Found | 2 |\n"
            "| download | transient | HTTP Error 429: Too Many Requests | 1 |") in text
    assert "Why videos were excluded (2 videos):" in text
    assert "| in a downstream dataset (BoLD) | 2 |" in text


def test_many_runs_and_reasons_are_cut_to_the_newest_and_most_frequent(tmp_path, card_inputs):
    rows = [run_row(i, 1, i, 10, 10 * i) for i in range(1, 29)]
    failed = [video_row(f"f{i:02d}", "failed", stage="frames", error=f"error kind {i % 12}") for i in range(36)]
    c = card(tmp_path, card_inputs, runs_df(rows), videos_df(failed))
    text = c.markdown
    assert f"The newest {N_RUN_ROWS} of 28 runs:" in text
    assert "| 9 | run-9 |" in text and "| 8 | run-8 |" not in text and "| 28 | run-28 |" in text
    assert f"the {N_REASONS} most frequent of 12 reasons" in text
    assert text.count("| frames | permanent | error kind") == N_REASONS
    assert "| frames | permanent | error kind 0 | 3 |" in text and "error kind 9 |" not in text  # ties by name
    long_error = "x" * 500
    text = card(tmp_path, card_inputs, None, videos_df([video_row("f", "failed", stage="clips", error=long_error)]),
                name="long").markdown
    assert "x" * 117 + "..." in text and "x" * 118 not in text


def test_card_is_deterministic_whatever_the_row_order(tmp_path, card_inputs):
    card(tmp_path, card_inputs, runs_df(), videos_df(), name="a")
    card(tmp_path, card_inputs, runs_df(RUN_ROWS[::-1]), videos_df(VIDEO_ROWS[::-1]), name="b")

    def files(root: Path) -> dict:
        return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    fa, fb = files(tmp_path / "a"), files(tmp_path / "b")
    assert fa == fb and Path("plots/growth.png") in fa and len(fa) == 6


def test_card_without_runs_or_registry_has_no_growth_section(tmp_path, card_inputs):
    c = card(tmp_path, card_inputs)
    assert "growth" not in c.plots and "## Latest run" not in c.markdown and "## Videos by status" not in c.markdown
    # An empty runs table (registry made, no run finished yet): the statuses only.
    c = card(tmp_path, card_inputs, runs_df([]), videos_df(), name="empty")
    assert "growth" not in c.plots and "## Latest run" not in c.markdown and "| done | 9 |" in c.markdown


def test_card_from_disk_reads_the_runs_and_the_registry(tmp_path, caplog):
    cat = load_catalog(profile="tiny", data_root=str(tmp_path / "data"))
    write_frame_store(cat.artifact("frames", "d0"), 100)
    atomic_write_parquet(cat.artifact("clips", "d0"),
                         pa.Table.from_pylist([clip("d0", i, 0.01 if i % 2 else 0.9) for i in range(6)], schema=CLIP))
    build_manifests(cat, ["d0"])
    atomic_write_parquet(cat.artifact("runs"), pa.Table.from_pylist(RUN_ROWS, schema=RUNS))
    atomic_write_parquet(cat.artifact("video_registry"), pa.Table.from_pylist(VIDEO_ROWS, schema=VIDEOS))
    c = write_card_from_disk(cat, code_version="x")
    assert "Run `run-3`" in c.markdown and "| failed | 3 |" in c.markdown
    assert Path(c.plots["growth"]).is_file()
    # A damaged runs table leaves the growth section out; the card is still written.
    Path(cat.artifact("runs")).write_bytes(b"not parquet")
    shutil.rmtree(cat.artifact("dataset_card"))
    with caplog.at_level("WARNING", logger="emotionclip.stages.card"):
        c = write_card_from_disk(cat, code_version="x")
    assert "leaving out" in caplog.text and "runs.parquet" in caplog.text
    assert "## Latest run" not in c.markdown and "| failed | 3 |" in c.markdown and Path(c.path).is_file()
