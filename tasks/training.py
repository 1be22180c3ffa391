"""Prefect tasks of pre-training (`flows/pretrain.py` composes them): input checks,
the training run, its report. The work is `emotionclip.training`'s; these tasks add
what a user reads in the Prefect UI while and after the run trains:

    pretrain-config        markdown: every TrainConfig field and value (preset, ablation, profile)
    pretrain-progress      progress: step/total, loss, clips/s, ETA (tasks.progress)
    pretrain-loss-curve    markdown: loss and lr curves as an embedded PNG, a new version
                           after new steps (10 s, backing off to 15 min), a last one at the end
    pretrain-probe         table: the in-training probe's metrics, one row per probed epoch
    pretrain-epochs        table: per-epoch loss and throughput
    pretrain-checkpoint    markdown: the newest checkpoint

The curve and the probe table are read from the run's files (metrics.jsonl,
epochs.jsonl), so they work the same in this process and under torchrun (rank 0
writes them). An artifact API call that fails (the server restarting) is logged
once and skipped: a display never fails the training it shows.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
from pathlib import Path
from typing import Any, Callable, Optional

from prefect import get_run_logger, task

from emotionclip.training.config import TrainConfig

# Seconds between two looks at metrics.jsonl for the loss curve (a new artifact version
# only when new steps were logged): often enough to follow a run, rare enough that a
# long run's versions stay few (one every 10 s at most).
CURVE_INTERVAL_S = 10.0
# ... growing by CURVE_BACKOFF after each look up to CURVE_MAX_INTERVAL_S: a 3-day paper run
# keeps ~300 versions of the ~45 KB PNG in the server's database, not 26,000 (one per 10 s).
CURVE_BACKOFF = 1.5
CURVE_MAX_INTERVAL_S = 900.0

CONFIG_KEY = "pretrain-config"
CURVE_KEY = "pretrain-loss-curve"
PROBE_KEY = "pretrain-probe"
EPOCHS_KEY = "pretrain-epochs"
CHECKPOINT_KEY = "pretrain-checkpoint"
PROGRESS_KEY = "pretrain-progress"


def _logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except Exception:  # outside a run (a test driving a watcher directly): a plain logger
        return logging.getLogger(__name__)


def _markdown(key: str, markdown: str, description: str) -> None:
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(markdown=markdown, key=key, description=description)


def _table(key: str, rows: list[dict[str, Any]], description: str) -> None:
    from prefect.artifacts import create_table_artifact

    create_table_artifact(table=rows, key=key, description=description)


class LiveRunArtifacts:
    """While the body runs, a background thread looks at `out_dir`'s metrics files,
    first after `interval_s`, then less and less often up to `max_interval_s`: the loss curve artifact when new steps were logged, the probe
    table when a new epoch was probed. On exit (a crash too) a last curve, marked as
    the end, and the probe table if it changed. `markdown(key, text, description)` / `table(key, rows,
    description)` publish (default: Prefect artifacts); their failures are counted and
    logged once, never raised."""

    def __init__(self, out_dir: str | Path, *, title: str = "pretrain", interval_s: Optional[float] = None,
                 max_interval_s: Optional[float] = None,
                 markdown: Callable[[str, str, str], None] = _markdown,
                 table: Callable[[str, list[dict[str, Any]], str], None] = _table) -> None:
        self.out_dir = Path(out_dir)
        self.title = title
        self.interval_s = CURVE_INTERVAL_S if interval_s is None else interval_s
        # a given interval stays fixed unless a maximum is given too
        self.max_interval_s = max_interval_s or (CURVE_MAX_INTERVAL_S if interval_s is None else self.interval_s)
        self._markdown, self._table = markdown, table
        self.log = _logger()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._steps_seen: Optional[int] = None  # logged steps shown by the last curve
        self._probes_seen = 0
        self.published = 0  # artifact versions made
        self.failures = 0
        self._warned = False

    def _warn(self, what: str, err: BaseException) -> None:
        self.failures += 1
        if not self._warned:  # once: a server that is down would otherwise log every interval
            self.log.warning("%s artifacts: %s failed (%s: %s); training goes on", self.title, what,
                             type(err).__name__, err)
            self._warned = True

    def refresh(self, final: bool = False) -> None:
        """Publish what changed since the last look (`final`: the curve in any case)."""
        from emotionclip.training.metrics import EPOCHS_FILE, METRICS_FILE, probe_table, read_jsonl
        from emotionclip.training.plots import loss_curve_markdown

        with self._lock:
            try:
                steps = read_jsonl(self.out_dir / METRICS_FILE)
                epochs = read_jsonl(self.out_dir / EPOCHS_FILE)
            except OSError as e:  # a file system hiccup: the next look reads again
                self._warn("reading the metrics files", e)
                return
            # each artifact on its own: one that fails does not hold the other back
            if final or len(steps) != (self._steps_seen or 0):
                note = f"metrics: `{self.out_dir / METRICS_FILE}`; " + ("training ended" if final else
                                                                        "updated while training")
                try:
                    text = loss_curve_markdown(steps, epochs, self.title, note=note)
                    self._markdown(CURVE_KEY, text, f"{self.title}: loss and learning rate per logged step")
                    self._steps_seen = len(steps)
                    self.published += 1
                except Exception as e:  # a display must never stop training
                    self._warn(CURVE_KEY, e)
            probes = probe_table(epochs)
            if len(probes) != self._probes_seen:
                try:
                    self._table(PROBE_KEY, probes, f"{self.title}: in-training linear probe, one row per probed epoch")
                    self._probes_seen = len(probes)
                    self.published += 1
                except Exception as e:
                    self._warn(PROBE_KEY, e)

    def _run(self) -> None:
        wait = self.interval_s
        while not self._stop.wait(wait):
            self.refresh()
            wait = min(wait * CURVE_BACKOFF, self.max_interval_s)

    def __enter__(self) -> "LiveRunArtifacts":
        # the copied context carries the Prefect run context: the artifacts belong to this task run
        ctx = contextvars.copy_context()
        self._thread = threading.Thread(target=ctx.run, args=(self._run,), name="pretrain-artifacts", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.refresh(final=True)


def _progress(config: TrainConfig, devices: int, steps_per_epoch: Optional[int]):
    """The steps into the `pretrain-progress` artifact (at most one update every few
    seconds; a server hiccup is logged, never fatal): reported by the loop itself in
    this process, or under torchrun read from rank 0's metrics.jsonl (a row every
    log_every_steps) while the ranks run."""
    from emotionclip.core.progress import follow_jsonl, track, use
    from emotionclip.training.metrics import METRICS_FILE

    from tasks.progress import StepProgress

    hook = StepProgress(PROGRESS_KEY, "pretrain")
    if devices <= 1:
        return use(hook)
    total = config.epochs * steps_per_epoch if steps_per_epoch else None
    if total is not None and config.max_steps is not None:
        total = min(total, config.max_steps)
    return follow_jsonl(Path(config.out_dir) / METRICS_FILE, track("train", total, "steps", hook=hook),
                        info_keys=("epoch", "loss", "clips_per_s"), interval_s=5.0)


@task(name="validate-pretrain-inputs")
def validate_inputs(config: TrainConfig, devices: int, nodes: int = 1) -> dict[str, Any]:
    """Manifests readable and valid, every video's frame store present, at least one
    global batch of clips over all `devices * nodes` ranks (`emotionclip.training.inputs.check_run_inputs`)."""
    from emotionclip.training.inputs import check_run_inputs

    info = {**check_run_inputs(config, devices * nodes), "devices": devices, "nodes": nodes}
    get_run_logger().info("training on %d clips from %d videos, %d device(s) x %d node(s)", info["clips"],
                          info["videos"], devices, nodes)
    return info


def publish_config(config: TrainConfig) -> None:
    """The `pretrain-config` artifact: every hyper-parameter of the run (logged, not
    raised, when the server is away)."""
    from emotionclip.training.config import config_markdown

    try:
        _markdown(CONFIG_KEY, config_markdown(config),
                  f"Training configuration: preset {config.preset}, ablation {config.ablation or 'none'}")
    except Exception as e:  # a display must never stop training
        _logger().warning("%s artifact failed (%s: %s); training goes on", CONFIG_KEY, type(e).__name__, e)


@task(name="train-emotionclip")
def train_model(config: TrainConfig, devices: int, steps_per_epoch: Optional[int] = None, nodes: int = 1,
                node_rank: int = 0, rdzv_endpoint: Optional[str] = None) -> dict[str, Any]:
    """Train; a crash re-raises with the newest resumable checkpoint in the message.
    While it trains: the `pretrain-config`, `pretrain-progress`, `pretrain-loss-curve`
    and `pretrain-probe` artifacts."""
    from emotionclip.training.checkpoint import latest_checkpoint
    from emotionclip.training.launch import Rendezvous, run_training

    publish_config(config)
    # one flow run per node: the same parameters but node_rank (emotionclip.training.launch)
    rendezvous = Rendezvous(nnodes=nodes, node_rank=node_rank, endpoint=rdzv_endpoint)
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(LiveRunArtifacts(config.out_dir))
            stack.enter_context(_progress(config, devices * nodes, steps_per_epoch))
            outcome = run_training(config, nproc=devices, rendezvous=rendezvous)
    except Exception as e:
        raise RuntimeError(f"training crashed: {e!r}; resumable checkpoint: "
                           f"{latest_checkpoint(config.out_dir)}") from e
    if not outcome.ok:
        raise RuntimeError(f"torchrun exited with code {outcome.returncode}; resumable checkpoint: "
                           f"{latest_checkpoint(config.out_dir)}")
    if outcome.result is None:  # under torchrun: what the ranks did is in out_dir
        return {"step": None, "checkpoint": latest_checkpoint(config.out_dir)}
    r = outcome.result
    return {"step": r.step, "epoch": r.epoch, "loss": r.last_loss, "checkpoint": r.checkpoint}


@task(name="report-pretrain")
def report_training(config: TrainConfig, summary: dict[str, Any]) -> None:
    """The `pretrain-epochs` table and the `pretrain-checkpoint` note."""
    from emotionclip.training.config import CONFIG_FILE
    from emotionclip.training.metrics import METRICS_FILE, TB_DIR, epoch_table

    out = Path(config.out_dir)
    _table(EPOCHS_KEY, epoch_table(out), "Per-epoch loss and throughput")
    ckpt = summary.get("checkpoint")
    link = Path(ckpt).resolve().as_uri() if ckpt and "://" not in ckpt else ckpt
    _markdown(
        CHECKPOINT_KEY,
        f"## EmotionCLIP checkpoint\n\n[{ckpt}]({link})\n\n"
        f"- preset: `{config.preset}`\n- ablation: `{config.ablation or 'none'}`\n- step: {summary.get('step')}\n"
        f"- loss: {summary.get('loss')}\n"
        f"- metrics: `{out / METRICS_FILE}`, TensorBoard: `{out / TB_DIR}`, config: `{out / CONFIG_FILE}`\n\n"
        f"Load with `emotionclip.models.load_model(path)`; resume with `emotionclip train ... --resume latest`.",
        "Latest checkpoint")
