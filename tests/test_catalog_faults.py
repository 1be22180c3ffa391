"""A bad catalog, override or data root is one clear line (exit 2 on the command line),
never a traceback; artifact templates stay under the data root; relative data roots
resolve by a stated rule."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from emotionclip.cli import app
from emotionclip.core.catalog import DEFAULT_CATALOG, CatalogError, check_data_root, load_catalog


def _base() -> dict:
    return yaml.safe_load(DEFAULT_CATALOG.read_text())


def _write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def _cli(*args: str):
    return CliRunner().invoke(app, list(args))


def _one_line_error(result, exit_code: int = 2) -> str:
    """The error output: `exit_code`, exactly one non-empty line, no traceback."""
    out = result.output  # stdout and stderr together
    assert result.exit_code == exit_code, f"exit {result.exit_code}: {out}"
    assert "Traceback" not in out, out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got: {out!r}"
    return lines[0]


# -- artifact templates --------------------------------------------------------

@pytest.mark.parametrize("template", [
    "../../escape/{video_id}/frames.zip",
    "videos/../../{video_id}/frames.zip",
    "videos\\..\\..\\{video_id}\\frames.zip",
    "..",
    "/etc/{video_id}/frames.zip",
    "\\\\server\\share\\{video_id}.zip",
    "s3://other-bucket/{video_id}/frames.zip",
    "file:///tmp/{video_id}/frames.zip",
    "C:/videos/{video_id}/frames.zip",
    "videos/{video_id}/{other}.zip",
    "videos/{video_id.__class__}/frames.zip",
    "",
])
def test_template_outside_data_root_is_rejected_naming_the_key(tmp_path, template):
    data = _base()
    data["artifacts"]["frames"] = template
    with pytest.raises(CatalogError, match=r"artifacts\.frames: ") as err:
        load_catalog(_write(tmp_path / "cat.yaml", data))
    assert "\n" not in str(err.value)


def test_template_override_outside_data_root_is_rejected():
    with pytest.raises(CatalogError, match=r"artifacts\.manifests: .*'\.\.'"):
        load_catalog(overrides={"artifacts.manifests": "../manifests"})


def test_relative_templates_stay_accepted_with_a_url_root(tmp_path):
    data = _base()
    data["artifacts"]["frames"] = "store/..frames/{video_id}.zip"  # `..` inside a name is no escape
    cat = load_catalog(_write(tmp_path / "cat.yaml", data), data_root="s3://bucket/tv")
    assert cat.artifact("frames", "v1") == "s3://bucket/tv/store/..frames/v1.zip"


# -- broken YAML, bad overrides --------------------------------------------------

BROKEN_YAML = "data_root: data\nprofile: tiny\nprofiles: [a, b\nstages: {}\n"


def test_broken_yaml_names_file_and_line(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text(BROKEN_YAML)
    line = _one_line_error(_cli("catalog", "validate", str(bad)))
    assert str(bad) in line and "line 4" in line, line


def test_broken_yaml_in_a_stage_command(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text(BROKEN_YAML)
    line = _one_line_error(_cli("stage", "words", "-v", "abc", "--catalog", str(bad), "--data-root", str(tmp_path / "d")))
    assert line.startswith("error: ") and str(bad) in line and "line 4" in line, line


def test_catalog_that_is_a_folder_is_one_line(tmp_path):
    line = _one_line_error(_cli("catalog", "validate", str(tmp_path)))
    assert str(tmp_path) in line, line


def test_unparsable_set_value_names_the_key(tmp_path):
    result = _cli("stage", "search", "--data-root", str(tmp_path / "d"), "--set", "stages.search.queries=[a,b")
    line = _one_line_error(result)
    assert "--set stages.search.queries" in line and "not valid YAML" in line, line


def test_set_without_equals_is_one_line(tmp_path):
    line = _one_line_error(_cli("stage", "words", "-v", "abc", "--data-root", str(tmp_path / "d"), "--set", "stages.filter"))
    assert "--set 'stages.filter'" in line and "KEY=VALUE" in line, line


def test_conflicting_overrides_are_one_line(tmp_path):
    line = _one_line_error(_cli("stage", "words", "-v", "abc", "--data-root", str(tmp_path / "d"),
                                "--set", "stages.filter=1", "--set", "stages.filter.max_neutral=0.1"))
    assert "stages.filter" in line, line


# -- data root that cannot be written --------------------------------------------

def _under_a_file(tmp_path: Path) -> Path:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    return blocker / "data"


def test_uncreatable_data_root_is_one_line_in_a_stage_command(tmp_path):
    root = _under_a_file(tmp_path)
    line = _one_line_error(_cli("stage", "words", "-v", "abc", "--profile", "tiny", "--data-root", str(root)))
    assert f"data root {root} is not writable" in line, line


def test_data_root_that_is_a_file_is_one_line(tmp_path):
    root = tmp_path / "a-file"
    root.write_text("x")
    line = _one_line_error(_cli("stage", "card", "--profile", "tiny", "--data-root", str(root)))
    assert f"data root {root} is not writable" in line, line


def test_read_only_data_root_is_one_line(tmp_path):
    # root (as in CI) writes into a chmod 555 folder, so there the read-only folder is a
    # sysfs one, which refuses writes even to root.
    as_root = os.geteuid() == 0
    root = Path("/sys/fs") if as_root else tmp_path / "ro"
    if not as_root:
        root.mkdir()
        root.chmod(0o555)
    try:
        line = _one_line_error(_cli("stage", "words", "-v", "abc", "--profile", "tiny", "--data-root", str(root)))
    finally:
        if not as_root:
            root.chmod(0o755)
    assert f"data root {root} is not writable" in line, line


def test_missing_data_root_is_created(tmp_path):
    root = tmp_path / "new" / "root"
    cat = load_catalog(profile="tiny", data_root=str(root))
    assert check_data_root(cat) == str(root)
    assert root.is_dir() and list(root.iterdir()) == []  # the probe file is gone
    # an fsspec URL root gets a probe object, written and removed (S3: tests/test_object_store.py)
    import fsspec

    assert check_data_root(load_catalog(profile="tiny", data_root="memory://probe-root/tv")) == "memory://probe-root/tv"
    assert not fsspec.filesystem("memory").glob("/probe-root/tv/.write-check-*")


def test_flow_refuses_an_unwritable_data_root(tmp_path):
    from flows.build_tv_dataset import build_tv_dataset

    root = _under_a_file(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CatalogError, match=f"data root {root} is not writable"):
        build_tv_dataset(source="folder", folder=str(tmp_path / "empty"), data_root=str(root))


# -- relative data roots -----------------------------------------------------------

@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """A catalog in cfg/ with `data_root: rel-data`, and the current directory work/."""
    data = _base()
    data["data_root"] = "rel-data"
    cat = _write(tmp_path / "cfg" / "cat.yaml", data)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return cat, tmp_path / "cfg", work


def test_catalog_data_root_is_relative_to_the_catalog(elsewhere):
    cat, cfg, _ = elsewhere
    assert load_catalog(cat).root == str(cfg / "rel-data")


def test_given_data_root_is_relative_to_the_current_directory(elsewhere):
    cat, cfg, work = elsewhere
    assert load_catalog(cat, data_root="mine").root == str(work / "mine")
    # through the command line: the stage command creates the root where the user is
    result = _cli("stage", "words", "-v", "nope", "--catalog", str(cat), "--profile", "tiny", "--data-root", "mine")
    assert result.exit_code == 1 and "not downloaded" in result.output, result.output
    assert (work / "mine").is_dir() and not (cfg / "mine").exists()


def test_flow_data_root_parameter_is_relative_to_the_current_directory(elsewhere):
    from flows.build_tv_dataset import build_tv_dataset

    cat, cfg, work = elsewhere
    (work / "empty").mkdir()
    build_tv_dataset(source="folder", folder="empty", catalog_path=str(cat), data_root="flow-data")
    assert (work / "flow-data").is_dir() and not (cfg / "flow-data").exists()
