"""Options shared by the command groups: which catalog, profile, data root, overrides."""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, NoReturn, Optional

import typer
import yaml

if TYPE_CHECKING:
    from emotionclip.core.catalog import Catalog

CatalogOpt = typer.Option(None, "--catalog", "-c", help="Catalog file (default: data_catalog.yaml or $EMOTIONCLIP_CATALOG).")
ProfileOpt = typer.Option(None, "--profile", "-p", help="Model profile from the catalog (paper or tiny).")
DataRootOpt = typer.Option(
    None, "--data-root",
    help="Override the catalog's data_root (local folder or fsspec URL). A relative folder given here "
         "is relative to the current directory; a relative data_root in the catalog file is relative "
         "to the catalog's folder.")
SetOpt = typer.Option(None, "--set", help="Override a catalog value, e.g. --set stages.filter.max_neutral=0.3 (repeatable).")


def fail_usage(message: str) -> NoReturn:
    """Print one `error: ...` line and exit 2 (a usage or catalog error, not a crash)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def parse_overrides(pairs: Optional[list[str]]) -> dict[str, object]:
    """["a.b=1", "c=[x, y]"] -> {"a.b": 1, "c": ["x", "y"]} (values parsed as YAML).
    A malformed pair exits 2 with one line naming it."""
    from emotionclip.core.catalog import describe_yaml_error

    out: dict[str, object] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            fail_usage(f"--set {pair!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            fail_usage(f"--set {key.strip()}: value {value!r} is not valid YAML ({describe_yaml_error(e)})")
    return out


def open_catalog(catalog: Optional[Path], profile: Optional[str], data_root: Optional[str], sets: Optional[list[str]],
                 *, writable: bool = False) -> "Catalog":
    """Load the catalog or exit 2 with the error naming the key. `writable`: also make sure
    the data root can be written (created if missing), for the commands that write there."""
    from emotionclip.core.catalog import CatalogError, check_data_root, load_catalog

    overrides = parse_overrides(sets)
    try:
        cat = load_catalog(catalog, profile=profile, data_root=data_root, overrides=overrides)
        if writable:
            check_data_root(cat)
    except CatalogError as e:
        fail_usage(str(e))
    return cat


# -- progress bars ------------------------------------------------------------------

PROGRESS_ENV = "EMOTIONCLIP_PROGRESS"  # auto (default): bars on a terminal; 1: always; 0: never


def progress_mode() -> str:
    """`EMOTIONCLIP_PROGRESS`: "auto" (bars when stderr is a terminal), "on" (always:
    off a terminal, rich writes each bar's final state once, at the end) or "off"."""
    value = os.environ.get(PROGRESS_ENV, "auto").strip().lower()
    if value in ("1", "true", "yes", "on", "always"):
        return "on"
    if value in ("0", "false", "no", "off", "never"):
        return "off"
    return "auto"


def _progress_columns() -> list:
    """Description, bar, M/N, rate, elapsed, ETA, extra figures."""
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    count, rate, info = _column_classes()
    return [TextColumn("[progress.description]{task.description}"), BarColumn(bar_width=24), count(), rate(),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), info()]


@functools.lru_cache(maxsize=1)
def _column_classes() -> tuple[type, type, type]:
    """The rich column classes, defined on first use (rich is imported only when a
    command shows bars, not by `emotionclip --help`)."""
    from rich import filesize
    from rich.progress import ProgressColumn
    from rich.text import Text

    class CountColumn(ProgressColumn):
        """M/N in the task's unit; bytes as sizes."""

        def render(self, task) -> Text:
            unit = task.fields.get("unit", "")
            total = task.total
            if unit == "bytes":
                done = filesize.decimal(int(task.completed))
                text = f"{done}/{filesize.decimal(int(total)) if total is not None else '?'}"
            else:
                text = f"{int(task.completed)}/{int(total) if total is not None else '?'} {unit}".rstrip()
            return Text(text, style="progress.download")

    class RateColumn(ProgressColumn):
        """Units per second: rich's estimate over its recent samples while running, the
        average over the whole run once finished (or while there are too few samples)."""

        def render(self, task) -> Text:
            elapsed = task.finished_time if task.finished_time is not None else task.elapsed
            average = (task.completed - task.fields.get("first", 0)) / elapsed if elapsed else None
            speed = (None if task.finished else task.speed) or average
            unit = task.fields.get("unit", "")
            if speed is None:
                return Text("?/s", style="progress.data.speed")
            if unit == "bytes":
                return Text(f"{filesize.decimal(int(speed))}/s", style="progress.data.speed")
            return Text(f"{speed:.3g} {unit}/s".replace(" /s", "/s"), style="progress.data.speed")

    class InfoColumn(ProgressColumn):
        """The tracker's extra figures (loss, clips/s), when it has any."""

        def render(self, task) -> Text:
            return Text(task.fields.get("info", ""), style="progress.percentage")

    return CountColumn, RateColumn, InfoColumn


def format_info(info: dict) -> str:
    """Extra figures as `key value` pairs (floats to 4 significant digits), rates
    (`<unit>_per_s`) as `value unit/s`."""
    parts = []
    for key, value in info.items():
        if value is None:
            continue
        if key.endswith("_per_s") and isinstance(value, (int, float)):
            parts.append(f"{value:.3g} {key[:-len('_per_s')]}/s")
        else:
            parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
    return " ".join(parts)


class RichBars:
    """A `ProgressHook` drawing each tracker as a bar of a `rich.progress.Progress`.
    Nested trackers (depth > 0: detection inside feature extraction, the probe inside
    training) are shown while they run and removed when they finish."""

    def __init__(self, progress) -> None:
        import threading

        self.progress = progress
        self._tasks: dict[int, object] = {}
        self._lock = threading.Lock()  # feature tasks of several splits may report at once

    def __call__(self, event) -> None:
        with self._lock:
            fields = {"unit": event.unit, "info": format_info(dict(event.info))}
            task = self._tasks.get(event.id)
            if task is None:
                if event.finished and event.depth > 0:
                    return
                task = self._tasks[event.id] = self.progress.add_task(
                    event.description, total=event.total, completed=event.completed, first=event.completed,
                    **fields)
            else:
                self.progress.update(task, description=event.description, total=event.total,
                                     completed=event.completed, **fields)
            if event.finished:
                if event.depth > 0:
                    self.progress.remove_task(task)
                self._tasks.pop(event.id, None)


@contextlib.contextmanager
def progress_display(console=None, mode: Optional[str] = None) -> Iterator[None]:
    """Show the progress of the work inside the block as rich bars on stderr (the
    `emotionclip.core.progress` trackers it opens). Off a terminal nothing is drawn,
    so logs stay clean, unless `EMOTIONCLIP_PROGRESS=1` (or `mode="on"`); `console`:
    a `rich.console.Console` to draw on instead (tests)."""
    from emotionclip.core.progress import use

    mode = mode or progress_mode()
    if mode == "off":
        yield
        return
    from rich.console import Console
    from rich.progress import Progress

    console = console or Console(stderr=True)
    if mode == "auto" and not console.is_terminal:
        yield
        return
    progress = Progress(*_progress_columns(), console=console, transient=False)
    with progress, _logging_above(progress), use(RichBars(progress)):
        yield


@contextlib.contextmanager
def _logging_above(progress) -> Iterator[None]:
    """Log handlers that write to stderr go through the live display while it runs
    (rich's proxy of sys.stderr), so a log line appears above the bars instead of
    cutting through them."""
    import logging
    import sys

    from rich.file_proxy import FileProxy

    moved = []
    proxy = sys.stderr
    if isinstance(proxy, FileProxy):
        for h in logging.getLogger().handlers:
            if type(h) is logging.StreamHandler and h.stream is proxy.rich_proxied_file:
                moved.append((h, h.setStream(proxy)))
    try:
        yield
    finally:
        for h, old in moved:
            h.setStream(old)
