"""Dataset card: README content, real PNG plots, boxes drawn on example frames,
deterministic bytes, atomic replacement, the card from what is on disk, and its UI form
(the plots embedded as small PNG data URIs; tests/test_ui_browser.py shows it in the UI)."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from PIL import Image

from emotionclip.stages.card import (
    PREVIEW_MAX_BYTES, PREVIEW_MAX_WIDTH, DatasetCard, get_code_version, pick_examples, plot_examples, preview_png,
    write_card_from_disk, write_dataset_card,
)
from emotionclip.core.catalog import load_catalog
from emotionclip.stages.filter import filter_clips
from emotionclip.core.io import atomic_write_parquet
from emotionclip.stages.manifests import build_manifests
from emotionclip.core.schemas import CLIP, EMOTIONS

RED = np.array([255, 48, 48])  # the box colour (#ff3030)
_EMBEDDED = re.compile(r"!\[(\w+)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)")


def embedded(markdown: str) -> dict[str, bytes]:
    """Plot name -> PNG bytes of the images embedded as data URIs."""
    return {name: base64.b64decode(data, validate=True) for name, data in _EMBEDDED.findall(markdown)}


def clips(video_id: str, n: int, seed: int = 0) -> pd.DataFrame:
    """n clips of 2..4 s with bimodal neutral scores and a big box on every frame."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        start = 0.25 * i
        end = start + 2.125 + (i % 3) * 0.5
        neutral = float(rng.uniform(0, 0.04) if i % 2 else rng.uniform(0.6, 1.0))
        p = rng.dirichlet(np.ones(6)) * (1 - neutral)
        probs = dict(zip([e for e in EMOTIONS if e != "neutral"], p))
        fs, fe = int(np.ceil(start * 8)), int(np.floor(end * 8))
        row = {"clip_id": f"{video_id}:{i}", "video_id": video_id, "sentence_idx": i,
               "text": f"Sentence {i}: I can't believe it, that's wonderful!", "start_s": start, "end_s": end,
               "frame_start": fs, "frame_end": fe, "neutral": neutral, "person_frac": 1.0,
               "boxes": [{"frame_idx": k, "x1": 0.2, "y1": 0.1, "x2": 0.8, "y2": 0.9, "conf": 0.9} for k in range(fs, fe + 1)]}
        for e in EMOTIONS:
            row[f"prob_{e}"] = neutral if e == "neutral" else float(probs[e])
            row[f"logit_{e}"] = float(np.log(max(row[f"prob_{e}"], 1e-6)))
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=CLIP).to_pandas()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A catalog whose frame store for video `v1` is real (ffmpeg from a generated video)."""
    from emotionclip.stages.frames import extract_frames
    from emotionclip.sample import make_test_video

    tmp = tmp_path_factory.mktemp("card")
    cat = load_catalog(profile="tiny", data_root=str(tmp / "data"))
    video = make_test_video(tmp / "v1.mp4", duration_s=5.0, width=192, height=108, fps=8, source="testsrc2")
    extract_frames(video, cat.artifact("frames", "v1"), fps=8, short_edge=64)
    all_clips = pd.concat([clips("v1", 6), clips("v2", 4, seed=1)], ignore_index=True)
    kept, rejected = filter_clips(all_clips, cat.stages.filter)
    counts = {"videos": 3, "clips": len(all_clips), "kept": len(kept), "rejected": len(rejected), "failures": 1}
    failures = [{"video_id": "v3", "stage": "frames", "error": "moov atom not found", "time": "2024-01-01T00:00:00+00:00"}]
    return cat, kept, rejected, counts, failures


def test_card_contents_deterministic_and_atomic(setup, tmp_path):
    cat, kept, rejected, counts, failures = setup
    out = tmp_path / "card"
    out.mkdir()
    (out / "stale.txt").write_text("from an older card")
    card = write_dataset_card(cat, out, counts, kept, rejected, failures, "git v0.1-test")
    assert isinstance(card, DatasetCard) and str(card.path) == str(out / "README.md")
    text = (out / "README.md").read_text()
    assert text == card.markdown
    assert "git v0.1-test" in text and "profile `tiny`" in text
    assert "| kept | 5 |" in text and "| clips | 10 |" in text
    assert "| neutral | 5 | 50.0% |" in text and "| too_long | 0 | 0.0% |" in text
    assert "| frames | 1 |" in text  # failures per stage
    assert "max_neutral: 0.05" in text and "detector: tiny/detector.pt" in text  # catalog values used
    for name in ("neutral", "emotions", "durations", "examples"):
        assert f"](plots/{name}.png)" in text
        with Image.open(card.plots[name]) as im:
            assert im.format == "PNG" and im.size[0] > 300
    # The UI form: the same text, each plot embedded as a smaller PNG instead of linked.
    ui = card.ui_markdown
    pngs = embedded(ui)
    assert sorted(pngs) == ["durations", "emotions", "examples", "neutral"] and "](plots/" not in ui
    assert _EMBEDDED.sub(lambda m: f"![{m[1]}](plots/{m[1]}.png)", ui) == text
    for name, data in pngs.items():
        with Image.open(io.BytesIO(data)) as im, Image.open(card.plots[name]) as full:
            im.load()
            assert im.format == "PNG" and len(data) <= PREVIEW_MAX_BYTES
            assert im.size[0] == min(full.size[0], PREVIEW_MAX_WIDTH)
    assert len(ui) < 5 * PREVIEW_MAX_BYTES * 4 // 3 + 2 * len(text)
    # Replaced as a whole (the stale file is gone, no temporary folder is left),
    # and the same inputs give the same bytes.
    assert not (out / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["card"]
    files_a = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    again = write_dataset_card(cat, out, counts, kept, rejected, failures, "git v0.1-test")
    files_b = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert files_a == files_b and len(files_a) == 5
    assert again.ui_markdown == ui


def test_preview_keeps_to_the_byte_budget(tmp_path):
    """However busy the example frames, an embedded plot stays under its byte budget,
    smaller and narrower than the plot on disk; a plot already small keeps its size."""
    noise = np.random.default_rng(0).integers(0, 256, (300, 600, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.png")
    data = preview_png(tmp_path / "noise.png", max_width=500, max_bytes=40_000)
    with Image.open(io.BytesIO(data)) as im:
        assert len(data) <= 40_000 and im.format == "PNG" and im.size[0] < 500
        assert abs(im.size[0] / im.size[1] - 2) < 0.02  # aspect kept
    flat = np.full((100, 200, 3), 255, dtype=np.uint8)
    flat[40:60, 50:150] = RED
    Image.fromarray(flat).save(tmp_path / "flat.png")
    with Image.open(io.BytesIO(preview_png(tmp_path / "flat.png"))) as im:
        assert im.size == (200, 100) and red_pixels_of(im) == 20 * 100


def red_pixels_of(im: Image.Image) -> int:
    rgb = np.asarray(im.convert("RGB")).astype(int)
    return int((np.abs(rgb - RED).sum(axis=2) < 60).sum())


def red_pixels(path) -> int:
    with Image.open(path) as im:
        return red_pixels_of(im)


def test_example_grid_draws_boxes_from_the_frame_store(setup, tmp_path):
    cat, kept, *_ = setup
    v1 = pick_examples(kept[kept.video_id == "v1"], 2)
    plot_examples(cat, v1, tmp_path / "with.png")
    plot_examples(cat, v1.assign(boxes=[[] for _ in range(len(v1))]), tmp_path / "without.png")
    assert red_pixels(tmp_path / "with.png") > 50
    assert red_pixels(tmp_path / "without.png") < red_pixels(tmp_path / "with.png") - 50
    # A video without a frame store still gets a tile ("frame unavailable"), no crash.
    plot_examples(cat, pick_examples(kept[kept.video_id == "v2"], 2), tmp_path / "v2.png")
    assert Image.open(tmp_path / "v2.png").format == "PNG"


def test_card_without_any_clip(setup, tmp_path):
    cat, *_ = setup
    empty = CLIP.empty_table().to_pandas()
    card = write_dataset_card(cat, tmp_path / "c", {"videos": 0}, empty, empty.assign(reason=pd.Series(dtype=object)),
                              [], "x")
    assert "No video failed." in card.markdown and "Kept 0 of 0 clips" in card.markdown
    assert len(embedded(card.ui_markdown)) == 4
    assert all(p.exists() for p in card.plots.values())


def test_examples_are_picked_deterministically():
    df = pd.concat([clips("b", 20), clips("a", 20)], ignore_index=True)
    picked = pick_examples(df, 8)
    assert len(picked) == 8
    assert picked["clip_id"].tolist() == pick_examples(df.sample(frac=1, random_state=3), 8)["clip_id"].tolist()
    assert picked["clip_id"].iloc[0] == "a:0" and picked["clip_id"].iloc[-1] == "b:19"


def test_code_version_is_git_or_package():
    v = get_code_version()
    assert v.startswith(("git ", "emotionclip ")) and len(v) > 5


def test_card_from_disk_after_build_manifests(setup, tmp_path):
    import shutil
    from pathlib import Path

    src, *_ = setup
    cat = load_catalog(profile="tiny", data_root=str(tmp_path / "data"))
    # build_manifests checks every clip's frames against the video's frame store.
    Path(cat.artifact("frames", "v1")).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src.artifact("frames", "v1"), cat.artifact("frames", "v1"))
    atomic_write_parquet(cat.artifact("clips", "v1"), pa.Table.from_pandas(clips("v1", 6), schema=CLIP, preserve_index=False))
    counts = build_manifests(cat, ["v1", "missing"], [])
    card = write_card_from_disk(cat, code_version="x")
    assert card.path.exists()
    assert f"| kept | {counts['kept']} |" in card.markdown and "| manifests | 1 |" in card.markdown
    assert f"catalog fingerprint `{counts['fingerprint']}`" in card.markdown
    # The flow passes its own summary and publishes the markdown.
    again = write_card_from_disk(cat, counts={**counts, "processed": 1}, code_version="x")
    assert again.path == card.path and "| processed | 1 |" in again.markdown
