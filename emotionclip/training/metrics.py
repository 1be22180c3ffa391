"""Training metrics: TensorBoard event files and `metrics.jsonl` (rank 0 only).

One JSON line per logged step: {step, epoch, loss, lr: {group: lr},
logit_scale, clips_per_s, data_wait_frac}; one line per finished epoch in
`epochs.jsonl`: {epoch, step, loss, clips_per_s, data_wait_frac, checkpoint} and,
on probed epochs, probe: {dataset, metrics: {"split/metric": value}, results, skipped}.
Lines are appended and flushed at once, so a crashed run keeps what it logged;
on resume, lines past the checkpoint's step are dropped first so the files
read as one uninterrupted run.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

METRICS_FILE = "metrics.jsonl"
EPOCHS_FILE = "epochs.jsonl"
TB_DIR = "tensorboard"


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.exists():
        return []
    out = []
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line cut by a crash
    return out


def truncate_after(path: str | os.PathLike, step: int) -> None:
    """Drop logged lines with `step` > the resumed checkpoint's step."""
    p = Path(path)
    rows = [r for r in read_jsonl(p) if int(r.get("step", 0)) <= step]
    if p.exists():
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        os.replace(tmp, p)


class Throughput:
    """Clips trained and seconds spent waiting for data since `reset()` (one log
    window, or one epoch), as rates over the wall time since then."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.reset()

    def reset(self) -> None:
        self.clips, self.wait_s, self.t0 = 0, 0.0, self.clock()

    def add(self, clips: int, wait_s: float) -> None:
        self.clips += clips
        self.wait_s += wait_s

    def rates(self) -> dict[str, float | None]:
        el = self.clock() - self.t0
        return {"clips_per_s": self.clips / el if el > 0 else None,
                "data_wait_frac": self.wait_s / el if el > 0 else None}


def step_row(step: int, epoch: int, loss: float, lr: dict[str, float], logit_scale: float,
             window: Throughput) -> dict[str, Any]:
    """A `metrics.jsonl` line; `logit_scale` is the multiplier (1/tau), not its log."""
    return {"step": step, "epoch": epoch, "loss": loss, "lr": lr, "logit_scale": logit_scale, **window.rates()}


def epoch_row(epoch: int, step: int, losses: Sequence[float], meter: Throughput,
              checkpoint: str | None) -> dict[str, Any]:
    """An `epochs.jsonl` line (the probe's result is added by the caller)."""
    return {"epoch": epoch, "step": step, "loss": sum(losses) / len(losses) if losses else None,
            **meter.rates(), "checkpoint": checkpoint}


class MetricsLogger:
    def __init__(self, out_dir: str | os.PathLike, enabled: bool = True, resume_step: int | None = None):
        self.enabled = enabled
        self.dir = Path(out_dir)
        self._tb = None
        if not enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            truncate_after(self.dir / METRICS_FILE, resume_step)
            truncate_after(self.dir / EPOCHS_FILE, resume_step)
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops events after the checkpoint, as for the JSON lines
        self._tb = SummaryWriter(str(self.dir / TB_DIR), purge_step=resume_step + 1 if resume_step else None)

    def _append(self, name: str, row: dict[str, Any]) -> None:
        with open(self.dir / name, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()

    def log_step(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._append(METRICS_FILE, row)
        step = int(row["step"])
        for key in ("loss", "logit_scale", "clips_per_s", "data_wait_frac"):
            if key in row and row[key] is not None:
                self._tb.add_scalar(f"train/{key}", row[key], step)
        for group, lr in row.get("lr", {}).items():
            self._tb.add_scalar(f"lr/{group}", lr, step)

    def log_epoch(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._append(EPOCHS_FILE, row)
        for key in ("loss", "clips_per_s", "data_wait_frac"):
            if row.get(key) is not None:
                self._tb.add_scalar(f"epoch/{key}", row[key], int(row["epoch"]))
        probe = row.get("probe")
        if probe:  # at the global step, so probe curves line up with the loss
            for name, value in probe["metrics"].items():
                self._tb.add_scalar(f"probe/{probe['dataset']}/{name}", value, int(row["step"]))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None


def _round(value: Any, digits: int) -> Any:
    return round(value, digits) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def epoch_table(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """One row per finished epoch (epoch, step, mean loss, clips/s, data-wait share);
    a run stopped inside its first epoch: its last logged step instead."""
    out = Path(out_dir)
    epochs = read_jsonl(out / EPOCHS_FILE)
    src = epochs if epochs else read_jsonl(out / METRICS_FILE)[-1:]
    return [{"epoch": e.get("epoch"), "step": e.get("step"), "loss": _round(e.get("loss"), 5),
             "clips_per_s": _round(e.get("clips_per_s"), 2), "data_wait_frac": _round(e.get("data_wait_frac"), 3)}
            for e in src]


def probe_table(epochs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The in-training probe's numbers, one row per probed epoch (epochs.jsonl rows):
    epoch, step, dataset, one column per "split/metric", skipped samples, results file."""
    rows = []
    for e in epochs:
        probe = e.get("probe")
        if not probe:
            continue
        rows.append({"epoch": e.get("epoch"), "step": e.get("step"), "dataset": probe.get("dataset"),
                     **{name: _round(value, 4) for name, value in sorted(probe.get("metrics", {}).items())},
                     "skipped": probe.get("skipped"), "results": probe.get("results")})
    return rows
