"""Exclusions (paper appendix A.1: videos of the downstream datasets removed by YouTube
id and title): the catalog's rules and the data root's exclusion file, the reasons,
the atomic merge, the ids and titles read from the miniature benchmark layouts,
`emotionclip eval exclusions`, and the search leaving the excluded videos out."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from emotionclip.evaluation import sample as L
from emotionclip.cli.eval import app
from emotionclip.core.catalog import BOLD_OVERLAP_IDS, CatalogError, SearchParams, load_catalog
from emotionclip.core.exclusions import (
    Exclusions,
    ExclusionsError,
    add_exclusions,
    exclusions_path,
    load_exclusions,
    normalize_title,
)
from emotionclip.evaluation.datasets import DatasetLayoutError
from emotionclip.evaluation.exclusions import bold_youtube_id, dataset_exclusions, exclusions_from_dataset
from emotionclip.stages.search import Candidate, run_search


def _catalog(tmp_path, **search):
    return load_catalog(data_root=str(tmp_path / "data"), overrides={"stages.search": search} if search else None)


def _bold_csv_ids(root: Path) -> set[str]:
    ids = set()
    for split in ("train", "val"):
        with open(root / "annotations" / f"{split}.csv", newline="") as f:
            ids |= {row[0].split("/")[1].removesuffix(".mp4") for row in csv.reader(f)}
    return ids


# -- the rules ---------------------------------------------------------------------
def test_catalog_defaults_the_bold_ids_and_the_friends_rule(tmp_path):
    ex = load_exclusions(_catalog(tmp_path))
    assert ex.ids == set(BOLD_OVERLAP_IDS) and len(ex.ids) == 11
    assert ex.reason("7YpF6DntOYw", "Anything") == "excluded id (BoLD overlap)"
    # MELD is cut from Friends (paper section 4.1): a word rule, any case
    assert ex.reason("abcdefghijk", "FRIENDS S01E01 | The One Where Monica Gets a Roommate") == \
        r"title matches '\bfriends\b'"
    assert ex.reason("abcdefghijk", "The best of friends - full episode") is not None
    # a word, not a substring
    assert ex.reason("abcdefghijk", "Friendship is Magic S01E01") is None
    assert ex.reason("abcdefghijk", "Boyfriends | Full Episode") is None
    assert ex.reason("abcdefghijk", None) is None


def test_exact_titles_ignore_case_and_spacing():
    ex = Exclusions(ids={"abcdefghijk"}, titles=["The  Office (US)"], title_patterns=[],
                    title_sources={normalize_title("The Office (US)"): "catalog"})
    assert ex.reason("zzzzzzzzzzz", "the office\t(us) ") == "excluded title 'the office\\t(us) ' (catalog)"
    assert ex.reason("zzzzzzzzzzz", "The Office (US) S01E01") is None  # exact, not a prefix
    assert ex.reason("abcdefghijk", None) == "excluded id (exclusion list)"


def test_title_patterns_are_validated_in_the_catalog(tmp_path):
    with pytest.raises(CatalogError, match=r"stages\.search\.exclude_title_patterns.*not a valid regular expression"):
        _catalog(tmp_path, exclude_title_patterns=["(unclosed"])
    assert SearchParams(exclude_title_patterns=[]).exclude_title_patterns == []


def test_the_data_root_file_is_merged_with_the_catalog(tmp_path):
    cat = _catalog(tmp_path, exclude_titles=["Some Movie"])
    path = Path(exclusions_path(cat))
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump({
        "ids": ["handadded01"], "titles": ["A Hand Added Title"],
        "sources": [{"dataset": "bold", "root": "/b", "added": "2024-01-01T00:00:00Z",
                     "ids": ["fromboldaaa", "7YpF6DntOYw"], "titles": []}]}))
    ex = load_exclusions(cat)
    assert {"handadded01", "fromboldaaa", "7YpF6DntOYw"} <= ex.ids
    assert ex.reason("handadded01", None) == "excluded id (exclusions.yaml)"
    assert ex.reason("fromboldaaa", None) == "excluded id (bold)"
    assert ex.reason("7YpF6DntOYw", None) == "excluded id (BoLD overlap)"  # the catalog's source is kept
    assert ex.reason("x", "a hand added  title") is not None and ex.reason("x", "some movie") is not None


@pytest.mark.parametrize("content, message", [
    ("ids: [unclosed", "not valid YAML"),
    ("- just a list", "top level must be a mapping"),
    ("ids: [abc]\ncolour: red", "unknown key 'colour'"),
    ("ids: ['bad/id']", r"ids: invalid video id 'bad/id'"),
    ("ids: [12345678901]", r"is not a video id \(quote it\)"),
    ("sources: [{root: /x}]", r"sources\[0\]: expected a mapping with a dataset name"),
])
def test_a_bad_exclusion_file_is_one_clear_error(tmp_path, content, message):
    cat = _catalog(tmp_path)
    path = Path(exclusions_path(cat))
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(ExclusionsError, match=message) as exc:
        load_exclusions(cat)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


# -- adding ----------------------------------------------------------------------
def test_add_exclusions_merges_atomically_and_counts(tmp_path):
    cat = _catalog(tmp_path)
    path = Path(exclusions_path(cat))
    first = add_exclusions(cat, ["aaaaaaaaaaa", "7YpF6DntOYw", "aaaaaaaaaaa"], ["Some  Movie"], "bold", root="/b")
    assert (first["ids_found"], first["ids_added"], first["ids_known"]) == (2, 2, 1)  # 7YpF6DntOYw: catalog
    assert (first["titles_added"], first["titles_known"]) == (1, 0)
    data = yaml.safe_load(path.read_text())
    assert data["sources"][0]["dataset"] == "bold" and data["sources"][0]["ids"] == ["aaaaaaaaaaa", "7YpF6DntOYw"]
    assert data["sources"][0]["titles"] == ["Some Movie"] and data["sources"][0]["added"].endswith("Z")
    assert [p.name for p in path.parent.iterdir()] == ["exclusions.yaml"]  # no temporary file left

    again = add_exclusions(cat, ["aaaaaaaaaaa", "bbbbbbbbbbb"], ["some movie"], "bold", root="/b")
    assert (again["ids_added"], again["titles_added"], again["ids_known"]) == (1, 0, 1)
    data = yaml.safe_load(path.read_text())
    assert len(data["sources"]) == 1 and data["sources"][0]["ids"] == ["aaaaaaaaaaa", "7YpF6DntOYw", "bbbbbbbbbbb"]

    add_exclusions(cat, [], ["Friends"], "meld", root="/m")
    data = yaml.safe_load(path.read_text())
    assert [s["dataset"] for s in data["sources"]] == ["bold", "meld"]
    assert load_exclusions(cat).reason("bbbbbbbbbbb", None) == "excluded id (bold)"


def test_dry_run_writes_nothing(tmp_path):
    cat = _catalog(tmp_path)
    summary = add_exclusions(cat, ["aaaaaaaaaaa"], [], "bold", dry_run=True)
    assert summary["ids_added"] == 1 and summary["dry_run"] is True
    assert not Path(exclusions_path(cat)).exists()


def test_add_exclusions_rejects_bad_ids(tmp_path):
    with pytest.raises(ExclusionsError, match="invalid video id"):
        add_exclusions(_catalog(tmp_path), ["../../etc"], [], "bold")


# -- what the downstream datasets' files contain --------------------------------------
def test_bold_video_paths_carry_youtube_ids():
    assert bold_youtube_id("003/IzvOYVMltkI.mp4/0114.mp4") == "IzvOYVMltkI"
    assert bold_youtube_id("003/-FcI9dF6g0k.mp4/0002.mp4") == "-FcI9dF6g0k"
    assert bold_youtube_id("003/cliptrain0.mp4/0000.mp4") is None  # 10 characters: not a YouTube id
    assert bold_youtube_id("0114.mp4") is None


def test_bold_ids_from_the_annotations_and_the_video_folders(tmp_path):
    root = L.make_bold(tmp_path / "bold", n_train=2, n_val=2, youtube_ids=True)
    # a clip of the unlabelled test split: only its folder says where it comes from
    (root / "videos" / "004" / "7YpF6DntOYw.mp4").mkdir(parents=True)
    ids, titles = exclusions_from_dataset("bold", root)
    assert set(ids) == _bold_csv_ids(root) | {"7YpF6DntOYw"} and len(ids) == len(set(ids)) == 5
    assert titles == []


def test_bold_without_youtube_names_is_noted(tmp_path):
    found = dataset_exclusions("bold", L.make_bold(tmp_path / "bold", n_train=1, n_val=1))
    assert found.ids == [] and "carry no 11-character YouTube id" in found.notes[0]


def test_meld_is_friends(tmp_path):
    root = L.make_meld(tmp_path / "meld", per_class=1)
    assert exclusions_from_dataset("meld", root) == ([], ["Friends"])
    with pytest.raises(DatasetLayoutError, match="no \\*_sent_emo.csv"):
        exclusions_from_dataset("meld", tmp_path)


def test_liris_titles_where_a_file_names_them(tmp_path):
    root = L.make_liris(tmp_path / "liris", seconds=2, missing_movie=True)
    found = dataset_exclusions("liris", root)
    assert found.titles == [] and "add titles by hand" in found.notes[0]
    # LIRIS-ACCEDE's description file names each excerpt's source movie
    (root / "ACCEDEdescription.xml").write_text(
        "<ACCEDE><media><id>0</id><name>ACCEDE00000.mp4</name><movie>After_The_Rain</movie></media>"
        "<media><id>1</id><name>ACCEDE00001.mp4</name><movie>After_The_Rain</movie></media>"
        "<media><id>2</id><name>ACCEDE00002.mp4</name><movie>Big_Buck_Bunny</movie></media></ACCEDE>")
    (root / "movies.csv").write_text("id,Title\nMEDIAEVAL18_00,Sintel\n")
    assert exclusions_from_dataset("liris", root) == ([], ["After The Rain", "Big Buck Bunny", "Sintel"])


def test_moviegraphs_and_emotic_have_nothing_and_say_why(tmp_path):
    mg = dataset_exclusions("mg", L.make_moviegraphs(tmp_path / "mg"))
    assert (mg.ids, mg.titles) == ([], []) and "IMDb id only" in mg.notes[0]
    em = dataset_exclusions("emotic", L.make_emotic_preprocessed(tmp_path / "emotic", n=1))
    assert (em.ids, em.titles) == ([], []) and "images" in em.notes[0]
    with pytest.raises(KeyError, match="unknown dataset 'nope'"):
        dataset_exclusions("nope", tmp_path)


# -- the command, and the search leaving the videos out -----------------------------------
class _Backend:
    name = "recorded"

    def __init__(self, cands: list[Candidate]):
        self.cands = cands

    def videos(self, query, limit):
        return iter(self.cands[:limit])

    def playlists(self, query, limit):
        return iter(())

    def playlist_videos(self, playlist, query):
        return iter(())


def test_eval_exclusions_command_then_the_search_leaves_them_out(tmp_path):
    bold = L.make_bold(tmp_path / "bold", n_train=2, n_val=1, youtube_ids=True)
    data = tmp_path / "data"
    runner = CliRunner()
    dry = runner.invoke(app, ["exclusions", "bold", "--root", str(bold), "--data-root", str(data), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.stdout)["ids_added"] == 3 and not (data / "dataset" / "exclusions.yaml").exists()

    res = runner.invoke(app, ["exclusions", "bold", "--root", str(bold), "--data-root", str(data)])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert (summary["ids_added"], summary["ids_total"]) == (3, 3) and summary["notes"] == []
    res = runner.invoke(app, ["exclusions", "meld", "--root", str(L.make_meld(tmp_path / "meld", per_class=1)),
                              "--data-root", str(data)])
    assert res.exit_code == 0 and json.loads(res.stdout)["titles_known"] == 1  # the default Friends rule
    assert "note: MELD is cut from the Friends TV show" in res.stderr

    bold_id = sorted(_bold_csv_ids(bold))[0]
    cands = [Candidate(vid, title, "Channel", 3000.0, f"https://www.youtube.com/watch?v={vid}", True)
             for vid, title in [(bold_id, "A drama"), ("keepthis001", "Drama S01E01"),
                                ("friendsep01", "Friends S02E03 Full Episode"), ("7YpF6DntOYw", "Other")]]
    cat = load_catalog(data_root=str(data), overrides={"stages.search.queries": ["TV series"]})
    df = run_search(cat, backend=_Backend(cands), prober=lambda c: pytest.fail(f"unexpected check of {c.id}"))
    assert list(df["id"]) == ["keepthis001"]
    assert (df.attrs["stats"]["excluded_id"], df.attrs["stats"]["excluded_title"]) == (2, 1)


def test_eval_exclusions_errors_are_one_line(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["exclusions", "nope", "--root", str(tmp_path)])
    assert res.exit_code == 2 and res.stderr.strip() == "error: unknown dataset 'nope'; expected one of " \
        "bold, meld, emotic, moviegraphs, liris"
    res = runner.invoke(app, ["exclusions", "meld", "--root", str(tmp_path / "absent")])
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1 and "no such folder" in res.stderr


def test_a_bad_exclusion_file_stops_the_search(tmp_path):
    from emotionclip.stages.search import SearchError

    cat = _catalog(tmp_path, queries=["TV series"])
    path = Path(exclusions_path(cat))
    path.parent.mkdir(parents=True)
    path.write_text("ids: [unclosed")
    with pytest.raises(SearchError, match=r"\[search\].*exclusions.yaml: not valid YAML"):
        run_search(cat, backend=_Backend([]), prober=None)
