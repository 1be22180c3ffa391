"""The dataset card (docs/design.md section 3): README.md with counts per stage,
per-reason rejections, the catalog values and code version that made the
data, and PNG plots that show it:

- neutral-score histogram (log counts; the paper shows it is bimodal),
- the six other emotions' probabilities before and after filtering,
- clip durations (all clips and kept clips, with the duration limits),
- a grid of example clips: one frame each, person boxes drawn, sentence under it,
- when the data root has a runs table (artifact `runs`), the dataset's growth run by
  run (videos done, kept clips) and what the last run added; with a video registry
  (artifact `video_registry`), the videos per status and the top reasons behind the
  failed and excluded ones.

Two forms of the same text: README.md on disk links the plots by relative path
(`plots/neutral.png`: it renders on GitHub and in file browsers, next to the full-size
PNGs), and `DatasetCard.ui_markdown` embeds smaller copies as PNG data URIs, for the
Prefect UI's markdown artifact (the UI cannot reach files beside the card).

Deterministic (no timestamps; examples picked by position, not at random) and
atomic: written into a temporary sibling folder, then swapped in.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import shutil
import subprocess
import textwrap
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from emotionclip.stages.filter import REASONS
from emotionclip.core.schemas import EMOTIONS

log = logging.getLogger(__name__)

N_EXAMPLES = 8  # example clips in the grid
_BINS = 50
_OTHER_EMOTIONS = [e for e in EMOTIONS if e != "neutral"]
# Fixed PNG metadata: matplotlib otherwise stamps its version only, but be explicit.
_PNG_META = {"Software": None}
# Embedded copies for the UI: about the width of the Prefect UI's artifact column, 256-colour
# palette PNGs (plots are flat colours), shrunk further until under the byte budget, so a
# card of five plots stays a few hundred KB whatever the example frames hold.
PREVIEW_MAX_WIDTH = 800
PREVIEW_MAX_BYTES = 100_000
_PREVIEW_MIN_WIDTH = 160


@dataclass(frozen=True)
class DatasetCard:
    """What `write_dataset_card` made."""

    path: Path | str  # README.md (a str for fsspec URLs)
    markdown: str  # README text (plots referenced relative to the card folder)
    plots: dict[str, Path | str] = field(default_factory=dict)
    ui_markdown: str = ""  # the same text with smaller plots embedded as data URIs (the Prefect UI artifact)


def get_code_version() -> str:
    """`git describe` of the source tree when it is a git checkout, else the package version."""
    from emotionclip.core.catalog import REPO_ROOT

    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"], cwd=REPO_ROOT,
            capture_output=True, text=True, timeout=10, check=True,
        )
        if out.stdout.strip():
            return f"git {out.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"emotionclip {version('emotionclip')}"
    except PackageNotFoundError:
        return "unknown"


# -- plots ---------------------------------------------------------------------

def _figure(**kw: Any):
    """A matplotlib Figure drawn by Agg: no pyplot state, so cards can be drawn from any thread."""
    from matplotlib.figure import Figure

    return Figure(**kw)


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=100, metadata=_PNG_META)
    return path


def preview_png(path: Path, max_width: int = PREVIEW_MAX_WIDTH, max_bytes: int = PREVIEW_MAX_BYTES) -> bytes:
    """A smaller copy of the PNG at `path` for embedding: at most `max_width` pixels wide,
    a 256-colour palette, and (down to a floor width) at most `max_bytes` long."""
    from PIL import Image

    with Image.open(path) as im:
        rgb = im.convert("RGB")  # the plots' alpha is opaque white; the palette needs RGB
    width = min(max_width, rgb.width)
    while True:
        small = rgb.resize((width, max(1, round(rgb.height * width / rgb.width))), Image.Resampling.LANCZOS) \
            if width < rgb.width else rgb
        buf = io.BytesIO()
        # No dithering: it would speckle the flat plot colours and cost bytes.
        small.quantize(colors=256, dither=Image.Dither.NONE).save(buf, "PNG", optimize=True)
        if buf.tell() <= max_bytes or width <= _PREVIEW_MIN_WIDTH:
            return buf.getvalue()
        # Bytes grow about with the pixel count: aim just under the budget, and always shrink.
        width = max(_PREVIEW_MIN_WIDTH, min(int(width * 0.9), int(width * 0.95 * (max_bytes / buf.tell()) ** 0.5)))


def png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _all_clips(kept: pd.DataFrame, rejected: pd.DataFrame) -> pd.DataFrame:
    parts = [d for d in (kept, rejected.drop(columns=["reason"], errors="ignore")) if len(d)]
    return pd.concat(parts, ignore_index=True) if parts else kept.iloc[:0]


def plot_neutral(clips: pd.DataFrame, max_neutral: float, path: Path) -> Path:
    fig = _figure(figsize=(6, 3.5))
    ax = fig.subplots()
    values = clips["neutral"].to_numpy(float) if len(clips) else np.array([])
    ax.hist(values[np.isfinite(values)], bins=_BINS, range=(0, 1), color="#4c72b0")
    if len(values):
        ax.set_yscale("log")  # the paper's plot: most clips are either clearly neutral or clearly not
    ax.axvline(max_neutral, color="#c44e52", linestyle="--", label=f"keep < {max_neutral:g}")
    ax.set_xlabel("neutral probability")
    ax.set_ylabel("clips (log)")
    ax.set_title(f"Neutral score, all {len(values)} clips")
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def plot_emotions(before: pd.DataFrame, after: pd.DataFrame, path: Path) -> Path:
    fig = _figure(figsize=(10, 5.5))
    axes = fig.subplots(2, 3, sharex=True)
    for ax, emotion in zip(axes.flat, _OTHER_EMOTIONS):
        col = f"prob_{emotion}"
        for df, label, color in ((before, f"before ({len(before)})", "#8c8c8c"), (after, f"after ({len(after)})", "#dd8452")):
            v = df[col].to_numpy(float) if len(df) else np.array([])
            v = v[np.isfinite(v)]
            if len(v):
                ax.hist(v, bins=_BINS, range=(0, 1), density=True, histtype="step", linewidth=1.5, label=label, color=color)
        ax.set_title(emotion)
        ax.set_yscale("symlog")
    if axes[0, 0].get_legend_handles_labels()[0]:
        axes[0, 0].legend(fontsize=8)
    for ax in axes[1]:
        ax.set_xlabel("probability")
    fig.suptitle("Emotion probabilities before and after filtering (density)")
    fig.tight_layout()
    return _save(fig, path)


def plot_durations(clips: pd.DataFrame, kept: pd.DataFrame, min_s: float, max_s: float, path: Path) -> Path:
    fig = _figure(figsize=(6, 3.5))
    ax = fig.subplots()
    dur_all = (clips["end_s"] - clips["start_s"]).to_numpy(float) if len(clips) else np.array([])
    dur_kept = (kept["end_s"] - kept["start_s"]).to_numpy(float) if len(kept) else np.array([])
    hi = max(float(np.nanmax(dur_all)) if len(dur_all) else 0.0, max_s * 1.5)
    ax.hist(dur_all[np.isfinite(dur_all)], bins=_BINS, range=(0, hi), color="#8c8c8c", label="all")
    ax.hist(dur_kept, bins=_BINS, range=(0, hi), color="#55a868", label="kept")
    for x in (min_s, max_s):
        ax.axvline(x, color="#c44e52", linestyle="--")
    ax.set_xlabel("clip duration (s)")
    ax.set_ylabel("clips")
    ax.set_title("Clip durations")
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def pick_examples(clips: pd.DataFrame, n: int = N_EXAMPLES) -> pd.DataFrame:
    """`n` clips spread evenly over the (sorted) table: deterministic."""
    if len(clips) == 0:
        return clips
    ordered = clips.sort_values(["video_id", "sentence_idx"], kind="stable").reset_index(drop=True)
    idx = np.unique(np.linspace(0, len(ordered) - 1, num=min(n, len(ordered))).round().astype(int))
    return ordered.iloc[idx].reset_index(drop=True)


def _with_frame_store(catalog: Any, clips: pd.DataFrame) -> pd.DataFrame:
    """Clips of videos whose frame store exists (all clips if none has one)."""
    from emotionclip.core.io import exists

    if len(clips) == 0:
        return clips
    have = {v for v in clips["video_id"].unique() if exists(catalog.artifact("frames", v))}
    return clips[clips["video_id"].isin(have)] if have else clips


def _example_frame(catalog: Any, clip: pd.Series) -> tuple[np.ndarray | None, int]:
    """The clip's middle frame from its video's frame store (None if unavailable)."""
    k = int((int(clip["frame_start"]) + int(clip["frame_end"])) // 2)
    try:
        from emotionclip.core.frame_store import FrameStore

        store = FrameStore(catalog.artifact("frames", clip["video_id"]))
        return np.asarray(store[k].convert("RGB")), k
    except Exception:  # a missing store must not stop the card
        return None, k


def plot_examples(catalog: Any, examples: pd.DataFrame, path: Path) -> Path:
    from matplotlib.patches import Rectangle

    n = max(len(examples), 1)
    cols = min(4, n)
    rows = -(-n // cols)
    fig = _figure(figsize=(3.2 * cols, 3.2 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (_, clip) in zip(axes.flat, examples.iterrows()):
        img, k = _example_frame(catalog, clip)
        if img is None:
            ax.text(0.5, 0.5, "frame unavailable", ha="center", va="center", transform=ax.transAxes)
        else:
            h, w = img.shape[:2]
            ax.imshow(img)
            for b in clip["boxes"] if clip["boxes"] is not None else []:
                if int(b["frame_idx"]) != k:
                    continue
                # Boxes are normalized to the frame; scale to the stored frame size.
                ax.add_patch(Rectangle((b["x1"] * w, b["y1"] * h), (b["x2"] - b["x1"]) * w, (b["y2"] - b["y1"]) * h,
                                       fill=False, edgecolor="#ff3030", linewidth=1.5))
        ax.set_title(f"{clip['clip_id']} (frame {k})", fontsize=7)
        ax.text(0.5, -0.04, textwrap.fill(str(clip["text"]), 40), ha="center", va="top",
                fontsize=7, transform=ax.transAxes, wrap=True)
    if len(examples) == 0:
        axes.flat[0].text(0.5, 0.5, "no clips", ha="center", va="center", transform=axes.flat[0].transAxes)
    fig.tight_layout()
    return _save(fig, path)


# -- the dataset across runs -------------------------------------------------------

N_REASONS = 10  # failure and exclusion reasons listed per table
N_RUN_ROWS = 20  # newest runs listed in the growth table (the plot shows all)
_REASON_CHARS = 120  # an error's first line, cut: messages differ by URL or path beyond that


def _read_dataset_table(catalog: Any, artifact: str, schema: Any) -> pd.DataFrame | None:
    """The `runs` or `video_registry` table of the data root, None when it is not there.
    A damaged table must not stop the card: it is left out with a warning."""
    from emotionclip.core.io import exists, open_file
    from emotionclip.core.schemas import validate_table

    try:
        path = catalog.artifact(artifact)
    except (AttributeError, KeyError):  # a catalog without the dataset registry
        return None
    if not exists(path):
        return None
    try:
        import pyarrow.parquet as pq

        with open_file(path, "rb") as f:
            table = pq.read_table(f)
        validate_table(table, schema, f"{artifact} {path}")
        return table.select(schema.names).to_pandas()
    except (OSError, ValueError) as e:
        log.warning("dataset card: leaving out %s (%s: %s)", path, type(e).__name__, e)
        return None


def sorted_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs oldest first (by start time, then id: the same rows give the same order)."""
    return runs.sort_values(["started", "run_id"], kind="stable").reset_index(drop=True)


def plot_growth(runs: pd.DataFrame, path: Path) -> Path:
    """Videos done (failed and excluded dashed) and kept clips after each run."""
    runs = sorted_runs(runs)
    x = np.arange(1, len(runs) + 1)
    fig = _figure(figsize=(7, 5))
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot(x, runs["videos_done"].to_numpy(float), marker="o", color="#4c72b0", label="done")
    top.plot(x, runs["videos_failed"].to_numpy(float), marker=".", linestyle="--", color="#c44e52", label="failed")
    top.plot(x, runs["videos_excluded"].to_numpy(float), marker=".", linestyle="--", color="#8c8c8c", label="excluded")
    top.set_ylabel("videos (total)")
    top.legend(fontsize=8)
    bottom.plot(x, runs["clips_total"].to_numpy(float), marker="o", color="#55a868", label="kept clips")
    bottom.bar(x, runs["clips_added"].to_numpy(float), color="#dd8452", alpha=0.6, label="added by the run")
    bottom.set_ylabel("clips")
    bottom.legend(fontsize=8)
    bottom.set_xlabel("run (oldest first)")
    if len(runs) <= 12:  # dates fit under the ticks; with more runs the numbers do
        bottom.set_xticks(x, [f"{i}\n{str(d)[:10]}" for i, d in zip(x, runs["started"])], fontsize=7)
    else:
        bottom.xaxis.get_major_locator().set_params(integer=True)
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
    first, last = str(runs["started"].iloc[0])[:10], str(runs["started"].iloc[-1])[:10]
    fig.suptitle(f"Dataset growth over {len(runs)} run{'s' if len(runs) != 1 else ''} ({first} to {last})")
    fig.tight_layout()
    return _save(fig, path)


def _reason(text: Any) -> str:
    """The message's first line, cut to _REASON_CHARS: the key reasons are grouped by."""
    text = str(text or "").strip()
    line = text.splitlines()[0] if text else "(no message)"
    return line if len(line) <= _REASON_CHARS else line[: _REASON_CHARS - 3] + "..."


def _top(counts: pd.Series, n: int = N_REASONS) -> list[tuple[Any, int]]:
    """Most frequent first, ties by name: deterministic."""
    items = sorted(((k, int(v)) for k, v in counts.items()), key=lambda kv: (-kv[1], str(kv[0])))
    return items[:n]


def render_runs(runs: pd.DataFrame | None, plot: str | None = None) -> list[str]:
    """Markdown lines: what the newest recorded run added, the totals after it, the growth
    plot (link target `plot`) and table."""
    if runs is None or len(runs) == 0:
        return []
    runs = sorted_runs(runs)
    last = runs.iloc[-1]
    rows = [(i, r.run_id, str(r.started)[:19], r.source, int(r.videos_added), int(r.videos_done),
             int(r.clips_added), int(r.clips_total)) for i, r in enumerate(runs.itertuples(), start=1)]
    shown = rows[-N_RUN_ROWS:]
    return [
        "## Latest run",
        "",
        f"Run `{last.run_id}` ({last.source}, started {last.started}) added {int(last.videos_added)} videos "
        f"and {int(last.clips_added)} kept clips. After it the dataset has {int(last.videos_done)} videos done "
        f"and {int(last.clips_total)} kept clips in all; {int(last.videos_failed)} videos failed and "
        f"{int(last.videos_excluded)} were excluded.",
        "",
        "## Growth, run by run",
        "",
        *([f"![growth]({plot})", ""] if plot else []),
        ("" if len(rows) <= N_RUN_ROWS else f"The newest {N_RUN_ROWS} of {len(rows)} runs:\n\n")
        + _table(shown, ("run", "id", "started", "source", "videos added", "videos done", "clips added",
                         "clips total")),
        "",
    ]


def render_statuses(videos: pd.DataFrame | None) -> list[str]:
    """Markdown lines: videos per status, then the top failure and exclusion reasons."""
    if videos is None:
        return []
    from emotionclip.core.schemas import VIDEO_STATUSES

    status = videos["status"].fillna("").astype(str)
    per_status = status.value_counts().to_dict()
    extra = sorted(s for s in per_status if s not in VIDEO_STATUSES)  # an unknown status is shown, not hidden
    status_rows = [(s, int(per_status.get(s, 0))) for s in (*VIDEO_STATUSES, *extra)]
    parts = ["## Videos by status", "", _table(status_rows, ("status", "videos")), ""]
    failed = videos[status == "failed"]
    if len(failed):
        kind = np.where(failed["transient"].fillna(False).astype(bool), "transient", "permanent")
        by = pd.Series(list(zip(failed["failed_stage"].fillna("").astype(str), kind, failed["error"].map(_reason))))
        rows = [(stage, k, msg, n) for (stage, k, msg), n in _top(by.value_counts())]
        n_kinds = by.nunique()
        parts += [f"Why videos failed ({len(failed)} videos"
                  + (f"; the {N_REASONS} most frequent of {n_kinds} reasons" if n_kinds > N_REASONS else "") + "):",
                  "", _table(rows, ("stage", "kind", "error", "videos")), ""]
    excluded = videos[status == "excluded"]
    if len(excluded):
        by = excluded["excluded_reason"].map(_reason)
        n_kinds = by.nunique()
        parts += [f"Why videos were excluded ({len(excluded)} videos"
                  + (f"; the {N_REASONS} most frequent of {n_kinds} reasons" if n_kinds > N_REASONS else "") + "):",
                  "", _table(_top(by.value_counts()), ("reason", "videos")), ""]
    return parts


# -- markdown ------------------------------------------------------------------

def _table(rows: Iterable[tuple[Any, ...]], header: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def render_markdown(
    catalog: Any, counts: dict[str, Any], kept: pd.DataFrame, rejected: pd.DataFrame,
    failures: list[dict[str, Any]], code_version: str, plots: dict[str, str],
    runs: pd.DataFrame | None = None, videos: pd.DataFrame | None = None,
) -> str:
    """README text. `plots` maps plot name -> link target (a relative path, or a data
    URI for the embedded form); `runs` and
    `videos` (the RUNS and VIDEOS tables, when the data root has them) add the
    dataset's growth and its videos per status."""
    import yaml

    fp = catalog.stages.filter
    by_reason = rejected["reason"].value_counts().to_dict() if len(rejected) else {}
    n_all = len(kept) + len(rejected)
    stage_rows = [(k, v) for k, v in counts.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and not k.startswith("rejected_")]
    reason_rows = [(r, int(by_reason.get(r, 0)), f"{100 * by_reason.get(r, 0) / n_all:.1f}%" if n_all else "-")
                   for r in REASONS]
    fail_stages = pd.Series([f.get("stage", "") for f in failures], dtype=object).value_counts().to_dict()
    dur = (kept["end_s"] - kept["start_s"]) if len(kept) else pd.Series(dtype=float)
    used = {
        "profile": catalog.profile,
        "models": catalog.models.model_dump(mode="json"),
        "stages": {s: getattr(catalog.stages, s).model_dump(mode="json")
                   for s in ("frames", "sentences", "sentiment", "humans", "filter", "manifests")},
    }
    parts = [
        "# EmotionCLIP TV dataset",
        "",
        f"Made by code version `{code_version}` with catalog profile `{catalog.profile}`"
        + (f" (catalog fingerprint `{counts['fingerprint']}`)." if counts.get("fingerprint") else "."),
        "",
        "## Counts",
        "",
        _table(stage_rows, ("what", "count")),
        "",
        f"Kept {len(kept)} of {n_all} clips"
        + (f"; kept clips last {dur.mean():.2f} s on average, {int(kept['frame_end'].sub(kept['frame_start']).add(1).sum())} frames in all." if len(kept) else "."),
        "",
        *render_runs(runs, plots.get("growth")),
        *render_statuses(videos),
        "## Rejected clips by reason",
        "",
        "Each rejected clip is counted once, under the first reason that applies in this order.",
        "",
        _table(reason_rows, ("reason", "clips", "share of all clips")),
        "",
        f"Filter: {fp.min_duration_s:g} s < duration < {fp.max_duration_s:g} s, text >= {fp.min_text_chars} characters, "
        f">= {fp.min_frames} frames, neutral < {fp.max_neutral:g}, person fraction >= {fp.min_person_frac:g}.",
        "",
        "## Failures",
        "",
        (_table(sorted(fail_stages.items()), ("stage", "videos")) if failures else "No video failed."),
        "",
        "## Plots",
        "",
    ]
    titles = {
        "neutral": "Neutral score (log counts)",
        "emotions": "The six other emotions before and after filtering",
        "durations": "Clip durations",
        "examples": "Example clips (middle frame, person boxes, sentence)",
    }
    for name, target in plots.items():
        if name == "growth":  # shown in its own section
            continue
        parts += [f"### {titles.get(name, name)}", "", f"![{name}]({target})", ""]
    parts += [
        "## Catalog values used",
        "",
        "```yaml",
        yaml.safe_dump(used, sort_keys=True).rstrip(),
        "```",
        "",
    ]
    return "\n".join(parts)


# -- writing -------------------------------------------------------------------

def _swap_in(tmp: Path, final: Path) -> None:
    """Replace folder `final` by `tmp`; `final` is missing only for the instant between two renames."""
    old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


def write_dataset_card(
    catalog: Any,
    out_dir: str | os.PathLike,
    counts: dict[str, Any],
    kept: pd.DataFrame,
    rejected: pd.DataFrame,
    failures: list[dict[str, Any]] | pd.DataFrame,
    code_version: str | None = None,
    runs: pd.DataFrame | None = None,
    videos: pd.DataFrame | None = None,
) -> DatasetCard:
    """Write README.md and the plots into `out_dir` (replaced as a whole).
    `runs` and `videos` (schemas.RUNS and schemas.VIDEOS rows) add the growth
    section with its plot and the videos per status.
    Returns a DatasetCard: `.path` (README.md), `.markdown` (its text, relative plot links),
    `.plots` (the full-size PNGs), `.ui_markdown` (the text with the plots embedded)."""
    from emotionclip.core.io import is_local

    if isinstance(failures, pd.DataFrame):
        failures = failures.to_dict("records")
    failures = list(failures)
    code_version = code_version or get_code_version()
    out = str(out_dir)
    local = is_local(out)
    final = Path(out[len("file://"):] if out.startswith("file://") else out) if local else None
    if local:
        final.parent.mkdir(parents=True, exist_ok=True)
        work = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    else:
        import tempfile

        work = Path(tempfile.mkdtemp(prefix="emotionclip-card-"))
    try:
        (work / "plots").mkdir(parents=True, exist_ok=True)
        all_clips = _all_clips(kept, rejected)
        fp = catalog.stages.filter
        made = {
            "neutral": plot_neutral(all_clips, fp.max_neutral, work / "plots" / "neutral.png"),
            "emotions": plot_emotions(all_clips, kept, work / "plots" / "emotions.png"),
            "durations": plot_durations(all_clips, kept, fp.min_duration_s, fp.max_duration_s, work / "plots" / "durations.png"),
            "examples": plot_examples(catalog, pick_examples(_with_frame_store(catalog, kept if len(kept) else all_clips)),
                                      work / "plots" / "examples.png"),
        }
        if runs is not None and len(runs):
            made["growth"] = plot_growth(runs, work / "plots" / "growth.png")
        markdown = render_markdown(catalog, counts, kept, rejected, failures, code_version,
                                   {k: f"plots/{p.name}" for k, p in made.items()}, runs, videos)
        ui_markdown = render_markdown(catalog, counts, kept, rejected, failures, code_version,
                                      {k: png_data_uri(preview_png(p)) for k, p in made.items()}, runs, videos)
        (work / "README.md").write_text(markdown, encoding="utf-8")
        if local:
            _swap_in(work, final)
            readme, plots = final / "README.md", {k: final / "plots" / p.name for k, p in made.items()}
        else:
            import fsspec

            fs, root = fsspec.core.url_to_fs(out)
            # Object stores: plots first, README last (it is what readers open).
            for p in made.values():
                fs.put_file(str(p), f"{root}/plots/{p.name}")
            fs.put_file(str(work / "README.md"), f"{root}/README.md")
            readme = f"{out.rstrip('/')}/README.md"
            plots = {k: f"{out.rstrip('/')}/plots/{p.name}" for k, p in made.items()}
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return DatasetCard(path=readme, markdown=markdown, plots=plots, ui_markdown=ui_markdown)


def write_card_from_disk(
    catalog: Any, counts: dict[str, Any] | None = None, code_version: str | None = None
) -> DatasetCard:
    """The card from what `build_manifests` wrote (manifests, rejected, failures),
    and the data root's runs and video registry when they exist.
    `counts` (e.g. the flow's summary) default to those stored in `_manifest.json`."""
    from emotionclip.core.io import exists, read_parquet
    from emotionclip.core.manifest_store import manifest_info, read_manifests
    from emotionclip.core.schemas import RUNS, VIDEOS

    out = catalog.artifact("manifests")
    kept = read_manifests(out)
    info = manifest_info(out)
    counts = dict(counts or info.get("counts") or {"kept": len(kept)})
    counts.setdefault("fingerprint", info.get("fingerprint"))
    rejected_path, failures_path = catalog.artifact("rejected"), catalog.artifact("failures")
    rejected = read_parquet(rejected_path) if exists(rejected_path) else kept.iloc[:0].assign(reason=pd.Series(dtype=object))
    failures = read_parquet(failures_path).to_dict("records") if exists(failures_path) else []
    runs = _read_dataset_table(catalog, "runs", RUNS)
    videos = _read_dataset_table(catalog, "video_registry", VIDEOS)
    return write_dataset_card(catalog, catalog.artifact("dataset_card"), counts, kept, rejected, failures, code_version,
                              runs, videos)
