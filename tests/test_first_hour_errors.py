"""A newcomer's first hour: the tiny training profile fits the demo's data, and every
mistake on the way is one `error: ...` line (what is wrong, what to do) with exit
code 2, through the real `emotionclip` command; `--debug` or EMOTIONCLIP_DEBUG=1
shows the traceback instead."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from emotionclip.core.catalog import REPO_ROOT
from emotionclip.training.config import default_num_workers, make_config
from emotionclip.training.errors import TrainingInputError
from training_data import write_manifest


def _cli(*args: str, env: dict[str, str] | None = None):
    from emotionclip.cli import app

    return CliRunner().invoke(app, list(args), env=env)


def _one_error_line(res) -> str:
    """The result's single stderr line, after checking exit code 2 and no traceback."""
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert "Traceback" not in res.output
    lines = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, res.stderr
    return lines[0]


@pytest.fixture(scope="module")
def corpus(clip_corpus, tmp_path_factory):
    """8 clips of 2 videos with their frame stores (conftest), as a manifests folder."""
    root, _, df = clip_corpus
    manifest = write_manifest(df, tmp_path_factory.mktemp("first-hour") / "manifests" / "clips-00000.parquet")
    return root, manifest.parent


def _train(corpus, out: Path, *extra: str, env: dict[str, str] | None = None):
    root, manifests = corpus
    return _cli("train", "--manifests", str(manifests), "--out", str(out), "--profile", "tiny",
                "--data-root", str(root), *extra, env=env)


# -- the tiny profile fits the demo ------------------------------------------------------

def test_tiny_profile_trains_two_epochs_of_16_and_explicit_values_win():
    tiny = make_config("paper", profile="tiny")
    assert (tiny.batch_size, tiny.epochs) == (16, 2)
    paper = make_config("paper", profile="paper")
    assert (paper.batch_size, paper.epochs) == (128, 25)  # paper appendix B.2
    assert make_config("official-code", profile="tiny").batch_size == 16
    mine = make_config("paper", profile="tiny", batch_size=4, epochs=5)
    assert (mine.batch_size, mine.epochs) == (4, 5)
    # an ablation applies after the profile values
    assert make_config("paper", ablation="text-frozen", profile="tiny").freeze_text is True


def test_loader_workers_default_to_the_cores_at_most_the_authors_8():
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert default_num_workers() == min(8, cores)
    for profile in (None, "paper", "tiny"):
        assert make_config("paper", profile=profile).num_workers == min(8, cores)
    assert make_config("paper", num_workers=0).num_workers == 0


def test_train_prints_the_tensorboard_command_of_its_run(corpus, tmp_path):
    out = tmp_path / "run"
    res = _train(corpus, out, "--max-steps", "1", "--set", "batch_size=2", "--set", "num_workers=0",
                 "--set", "num_frames=2")
    assert res.exit_code == 0, res.output
    assert f"TensorBoard: tensorboard --logdir {out / 'tensorboard'}" in res.stderr.splitlines()
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tensorboard").iterdir())


# -- train: the manifests --------------------------------------------------------------

def test_missing_manifests_folder(tmp_path):
    line = _one_error_line(_cli("train", "--manifests", str(tmp_path / "nope"), "--out", str(tmp_path / "o"),
                                "--profile", "tiny"))
    assert f"--manifests {tmp_path / 'nope'}: no such file or folder" in line
    assert "make demo" in line and "<data_root>/manifests" in line
    assert not (tmp_path / "o").exists()


def test_folder_without_a_manifest(tmp_path):
    (tmp_path / "data").mkdir()
    line = _one_error_line(_cli("train", "--manifests", str(tmp_path / "data"), "--out", str(tmp_path / "o"),
                                "--profile", "tiny"))
    assert "not a manifests folder (no _manifest.json" in line and "<data_root>/manifests" in line


def test_a_foreign_manifest_pointer_is_a_schema_error_in_one_line(tmp_path):
    folder = tmp_path / "manifests"
    folder.mkdir()
    (folder / "_manifest.json").write_text('{"format": "something-else"}')
    line = _one_error_line(_cli("train", "--manifests", str(folder), "--out", str(tmp_path / "o"),
                                "--profile", "tiny"))
    assert "not an emotionclip manifest" in line


def test_missing_manifests_at_a_url_goes_through_the_common_handler(tmp_path):
    url = f"file://{tmp_path / 'nope'}"
    line = _one_error_line(_cli("train", "--manifests", url, "--out", str(tmp_path / "o"), "--profile", "tiny"))
    assert line.startswith("error: no manifest shards in") and "nope" in line


def test_too_few_clips_for_a_batch_names_the_override(corpus, tmp_path):
    """8 clips, the tiny profile's batch of 16: caught before a model is built."""
    line = _one_error_line(_train(corpus, tmp_path / "o"))
    assert "8 clips are fewer than one batch of 16" in line and "--set batch_size=N" in line
    assert not (tmp_path / "o").exists()


# -- catalog and config values ----------------------------------------------------------

def test_bad_training_config_key_and_value(corpus, tmp_path):
    line = _one_error_line(_train(corpus, tmp_path / "o", "--set", "batch_sizee=4"))
    assert "--set batch_sizee: not a training config value" in line
    line = _one_error_line(_train(corpus, tmp_path / "o", "--set", "batch_size=lots"))
    assert "batch_size='lots'" in line and "integer" in line


def test_bad_catalog_key_value_and_profile(corpus, tmp_path):
    root, manifests = corpus
    bad_key = tmp_path / "bad_key.yaml"
    bad_key.write_text("stages:\n  filter:\n    max_neutrall: 0.5\n")
    line = _one_error_line(_train(corpus, tmp_path / "o", "--catalog", str(bad_key), "--set", "batch_size=2"))
    assert "stages.filter" in line and "max_neutrall" in line
    bad_value = tmp_path / "bad_value.yaml"
    bad_value.write_text("stages:\n  filter:\n    max_neutral: lots\n")
    line = _one_error_line(_train(corpus, tmp_path / "o", "--catalog", str(bad_value), "--set", "batch_size=2"))
    assert "max_neutral" in line
    line = _one_error_line(_cli("train", "--manifests", str(manifests), "--out", str(tmp_path / "o"),
                                "--profile", "nope", "--data-root", str(root)))
    assert "profile 'nope'" in line
    # the stage commands: the same one line
    line = _one_error_line(_cli("stage", "manifests", "--profile", "tiny", "--data-root", str(tmp_path / "d"),
                                "--set", "stages.filter.max_neutral=lots"))
    assert "max_neutral" in line


# -- checkpoints -------------------------------------------------------------------------

@pytest.fixture
def not_a_checkpoint(tmp_path) -> Path:
    path = tmp_path / "notes.pt"
    path.write_text("these are my notes, not a checkpoint\n")
    return path


def test_train_resume_from_a_missing_or_foreign_file(corpus, tmp_path, not_a_checkpoint):
    small = ("--max-steps", "1", "--set", "batch_size=2", "--set", "num_workers=0", "--set", "num_frames=2")
    line = _one_error_line(_train(corpus, tmp_path / "o", *small, "--resume", str(tmp_path / "gone.pt")))
    assert f"--resume {tmp_path / 'gone.pt'}: no such checkpoint" in line
    line = _one_error_line(_train(corpus, tmp_path / "o", *small, "--resume", str(not_a_checkpoint)))
    assert f"--resume {not_a_checkpoint}: cannot resume from it" in line
    assert "not an EmotionCLIP checkpoint: torch cannot read it" in line and "--resume latest" in line


def test_eval_run_with_a_missing_root_or_a_foreign_checkpoint(tmp_path, not_a_checkpoint):
    from emotionclip.evaluation import sample as L

    line = _one_error_line(_cli("eval", "run", "meld", "--root", str(tmp_path / "nope"), "--profile", "tiny",
                                "--out", str(tmp_path / "out")))
    assert line == f"error: --root {tmp_path / 'nope'}: no such folder"
    root = L.make_meld(tmp_path / "meld", per_class=1)
    line = _one_error_line(_cli("eval", "run", "meld", "--root", str(root), "--checkpoint", str(tmp_path / "gone.pt"),
                                "--out", str(tmp_path / "out")))
    assert "--checkpoint" in line and "no such file" in line
    line = _one_error_line(_cli("eval", "run", "meld", "--root", str(root), "--checkpoint", str(not_a_checkpoint),
                                "--out", str(tmp_path / "out")))
    assert line.startswith("error: could not load the model: not an EmotionCLIP checkpoint: torch cannot read it (")


def test_a_zip_that_is_not_a_checkpoint_is_named_without_torch_internals(tmp_path):
    import zipfile

    from emotionclip.models import load_checkpoint

    path = tmp_path / "photos.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("a.txt", "x")
    with pytest.raises(ValueError, match=r"^not an EmotionCLIP checkpoint: torch cannot read it \(RuntimeError: file"):
        load_checkpoint(path)


# -- --debug ----------------------------------------------------------------------------

def test_debug_option_and_environment_show_the_traceback(corpus, tmp_path):
    res = _cli("--debug", "train", "--manifests", str(corpus[1]), "--out", str(tmp_path / "o"),
               "--profile", "tiny", "--data-root", str(corpus[0]))
    assert res.exit_code == 1 and isinstance(res.exception, TrainingInputError), res.output
    res = _train(corpus, tmp_path / "o", env={"EMOTIONCLIP_DEBUG": "1"})
    assert res.exit_code == 1 and isinstance(res.exception, TrainingInputError), res.output
    # the installed command prints it
    env = {**os.environ, "EMOTIONCLIP_DEBUG": "1"}
    url = f"file://{tmp_path / 'nope'}"
    out = subprocess.run([sys.executable, "-m", "emotionclip.cli", "train", "--manifests", url, "--out",
                          str(tmp_path / "o"), "--profile", "tiny"], capture_output=True, text=True, env=env,
                         cwd=REPO_ROOT)
    assert out.returncode == 1 and "Traceback" in out.stderr and "FileNotFoundError" in out.stderr
    env.pop("EMOTIONCLIP_DEBUG")
    out = subprocess.run(out.args, capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    assert out.returncode == 2 and out.stderr.startswith("error: no manifest shards in")
    assert "Traceback" not in out.stderr
    assert out.stderr.count("\n") == 1


# -- the local Prefect server ------------------------------------------------------------

@pytest.mark.parametrize("command", ["up", "server"])
def test_local_server_on_a_port_in_use(tmp_path, command):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "deployments.local", command, "--port", str(port),
                              "--home", str(tmp_path / "home")], capture_output=True, text=True, cwd=REPO_ROOT)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.startswith(f"error: port {port} on 127.0.0.1 is in use (") and out.stderr.count("\n") == 1
    assert out.stderr.rstrip().endswith("; pick another with --port") and "Traceback" not in out.stderr
    assert not (tmp_path / "home" / "server.pid").exists()  # nothing was started


def test_port_check_sees_a_free_port_as_free():
    from deployments.local import port_in_use

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert port_in_use(port)  # bound, even before listen
    assert not port_in_use(port)
