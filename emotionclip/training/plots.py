"""Plots of a training run from its metrics files (`emotionclip.training.metrics`):
the loss and learning-rate curves as PNG bytes, and as markdown with the PNG
embedded as a data URI (what a Prefect markdown artifact shows inline; the
`pretrain` flow refreshes one while the run trains).

matplotlib's Agg canvas on a bare `Figure` (no pyplot state): safe to draw from a
background thread while training runs.
"""

from __future__ import annotations

import base64
import io
from typing import Any, Sequence

# Fixed PNG metadata (no matplotlib version stamp): the same rows give the same bytes.
_PNG_META = {"Software": None}
# Small enough for a UI artifact (a few tens of KB), large enough to read: about the
# width of the Prefect UI's artifact column.
FIGSIZE_IN = (8.0, 5.0)
DPI = 90


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and value == value and abs(value) != float("inf")


def loss_curve_png(steps: Sequence[dict[str, Any]], epochs: Sequence[dict[str, Any]] = (),
                   title: str = "pre-training") -> bytes:
    """PNG of the logged steps' loss (top; the epochs' mean loss as dots at their last
    step) and of each parameter group's learning rate (bottom, log scale).
    `steps`: metrics.jsonl rows, `epochs`: epochs.jsonl rows."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=FIGSIZE_IN, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_lr = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    rows = [r for r in steps if _finite(r.get("loss"))]
    xs, ys = [int(r["step"]) for r in rows], [float(r["loss"]) for r in rows]
    marker = "o" if len(xs) <= 50 else None  # a few steps: each one visible
    ax_loss.plot(xs, ys, marker=marker, markersize=3, linewidth=1.2, label="loss (logged step)")
    ends = [e for e in epochs if _finite(e.get("loss"))]
    if ends:
        ax_loss.plot([int(e["step"]) for e in ends], [float(e["loss"]) for e in ends], "s", color="tab:red",
                     markersize=5, label="epoch mean")
    ax_loss.set_ylabel("loss")
    ax_loss.grid(alpha=0.3)
    last = f"step {xs[-1]}: loss {ys[-1]:.4g}" if xs else "no step logged yet"
    ax_loss.set_title(f"{title} · {last}")
    if xs:
        ax_loss.legend(loc="upper right", fontsize="small")
    groups: dict[str, tuple[list[int], list[float]]] = {}
    for r in steps:
        for group, lr in (r.get("lr") or {}).items():
            if _finite(lr) and lr > 0:  # log scale: a warm-up's lr 0 is not drawn
                gx, gy = groups.setdefault(group, ([], []))
                gx.append(int(r["step"]))
                gy.append(float(lr))
    for group, (gx, gy) in groups.items():
        ax_lr.plot(gx, gy, linewidth=1.0, label=group)
    if groups:
        ax_lr.set_yscale("log")
        ax_lr.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="x-small")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("optimizer step")
    ax_lr.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole: no 1.5 tick on a short run
    ax_lr.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata=_PNG_META)
    return buf.getvalue()


def png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def loss_curve_markdown(steps: Sequence[dict[str, Any]], epochs: Sequence[dict[str, Any]] = (),
                        title: str = "pre-training", note: str = "") -> str:
    """Markdown of the loss curve with the PNG embedded (`loss_curve_png`), the first
    and last logged loss in words, and `note` (e.g. where the metrics file is)."""
    rows = [r for r in steps if _finite(r.get("loss"))]
    lines = [f"## Loss curve: {title}", "", f"![loss curve]({png_data_uri(loss_curve_png(steps, epochs, title))})",
             ""]
    if rows:
        first, last = rows[0], rows[-1]
        lines.append(f"- logged steps: {len(rows)}; step {first['step']}: loss {first['loss']:.5g}; "
                     f"step {last['step']}: loss {last['loss']:.5g}")
    else:
        lines.append("- no step logged yet")
    if note:
        lines.append(f"- {note}")
    return "\n".join(lines) + "\n"
