"""Process entry point for torchrun, and the one-device / several-device switch.

    torchrun --nproc_per_node 8 -m emotionclip.training.launch --config run/train_config.json

(multi-node: the usual torchrun rendezvous options / variables). The config
file is a `TrainConfig` as JSON; `emotionclip train` and the `pretrain` flow
write it into the output folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from emotionclip.training.config import TrainConfig

if TYPE_CHECKING:
    from emotionclip.training.state import TrainResult

CONFIG_FILE = "train_config.json"


@dataclass(frozen=True)
class RunOutcome:
    """How `run_training` ended. `returncode`: 0 = finished (in this process always 0:
    a failure raises); `result`: the TrainResult of an in-process run, None under
    torchrun (the ranks' results stay in their processes; the checkpoints and
    metrics files under out_dir tell what they did)."""

    returncode: int
    result: TrainResult | None = None

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def write_config(config: TrainConfig) -> Path:
    """The config as JSON in its output folder (atomic)."""
    from emotionclip.core.io import atomic_write_text

    path = Path(config.out_dir) / CONFIG_FILE
    atomic_write_text(path, json.dumps(config.model_dump(mode="json"), indent=2) + "\n")
    return path


def read_config(path: str | os.PathLike) -> TrainConfig:
    return TrainConfig.model_validate(json.loads(Path(path).read_text()))


def torchrun_command(config_path: str | os.PathLike, nproc: int) -> list[str]:
    """Argument list (never a shell string) for a single-node torchrun launch."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={int(nproc)}",
            "-m", "emotionclip.training.launch", "--config", str(config_path)]


def run_training(config: TrainConfig, nproc: int = 1, env: dict[str, str] | None = None) -> RunOutcome:
    """Train in this process (nproc <= 1; exceptions propagate) or under torchrun
    with `nproc` processes on this node (its exit code in the outcome)."""
    if nproc <= 1:
        from emotionclip.training.loop import train

        return RunOutcome(returncode=0, result=train(config))
    path = write_config(config)
    proc = subprocess.run(torchrun_command(path, nproc), env={**os.environ, **(env or {})})
    return RunOutcome(returncode=proc.returncode)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="EmotionCLIP pre-training worker (one per device).")
    parser.add_argument("--config", required=True, help="TrainConfig JSON file")
    args = parser.parse_args(argv)
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(level=logging.INFO if rank == "0" else logging.WARNING,
                        format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s")
    from emotionclip.training.distributed import cleanup
    from emotionclip.training.errors import TrainingInputError
    from emotionclip.training.loop import train

    try:
        result = train(read_config(args.config))
        logging.getLogger(__name__).info("finished at step %d, checkpoint %s", result.step, result.checkpoint)
    except TrainingInputError as e:  # the user's to fix: one line per rank, no traceback
        logging.getLogger(__name__).error("%s", e)
        return 2
    finally:
        cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
