"""Miniature benchmarks in each dataset's published layout, with synthetic media.

`make_sample(dataset, out_dir)` writes a small copy of BoLD, MovieGraphs, MELD,
EMOTIC or LIRIS-ACCEDE that the loaders in `emotionclip.evaluation.datasets` read
exactly as they read the real release, so `emotionclip eval run` can be tried end
to end without downloading anything (`emotionclip eval make-sample`). The media are
not people: videos are ffmpeg lavfi test patterns, images are coloured noise. Every
split holds every class at least twice (positive and negative at least twice each
for the multi-label sets), so every probe can be fitted and every metric is
defined. In the classification samples the test pattern (or image colour) follows
the sample's first class, a signal a probe can pick up even from random features.

The builders (`make_meld`, `make_bold`, ...) are also the test suite's layouts;
their defaults reproduce the folders the tests were written against (including the
release's quirks such as MELD's two missing clips), `make_sample` picks complete,
balanced ones.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from emotionclip.core.ffmpeg import run_ffmpeg
from emotionclip.evaluation.datasets import get_spec
from emotionclip.evaluation.datasets.base import BOLD_CATEGORIES, EMOTIC_CATEGORIES

DATASETS = ("bold", "moviegraphs", "meld", "emotic", "liris")
# Samples per split ("small": every dataset probes in well under a minute with the tiny model).
SIZES = {"small": 14, "medium": 56}
# With fewer, a multi-label class cannot be positive twice and negative twice in a split.
MIN_PER_SPLIT = 4
# Written last into every sample: says what the folder is (and that it is complete).
MARKER = "EMOTIONCLIP_SAMPLE.json"
# Under the data root: where the flows write the samples they generate on the fly.
SAMPLES_DIR = "eval-samples"
SOURCES = ["testsrc2", "smptebars", "rgbtestsrc", "testsrc", "yuvtestsrc", "pal100bars", "smptehdbars"]
CATEGORIES = {"bold": BOLD_CATEGORIES, "emotic": EMOTIC_CATEGORIES}
_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def video(path: Path, i: int, duration: float = 1.0, w: int = 64, h: int = 48, fps: float = 10) -> Path:
    """A synthetic H.264 video: lavfi test pattern number `i` (cycling through SOURCES)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    src = SOURCES[i % len(SOURCES)]
    run_ffmpeg(["-y", "-f", "lavfi", "-i", f"{src}=size={w}x{h}:rate={fps}:duration={duration}",
                "-c:v", "libx264", "-pix_fmt", "yuv420p", "-preset", "ultrafast", str(path)])
    return path


def positives_per_sample(n: int, n_classes: int) -> int:
    """Labels per sample so that `n` samples cover each of `n_classes` at least twice."""
    return min(n_classes, math.ceil(2 * n_classes / n))


def spread_labels(i: int, k: int, n_classes: int) -> list[int]:
    """Sample i's `k` positive classes: consecutive runs, so n samples cover the
    classes round-robin (each class ceil or floor of n*k/n_classes times)."""
    return sorted({(i * k + j) % n_classes for j in range(k)})


def _youtube_like_id(rng: np.random.Generator) -> str:
    return "".join(_ID_CHARS[c] for c in rng.integers(0, len(_ID_CHARS), 11))


def make_meld(root: Path, per_class: int = 2, missing: bool = True, eval_per_class: int = 1,
              by_class: bool = False) -> Path:
    """MELD.Raw with train/dev/test CSVs and clips: `per_class` clips of each emotion in
    train, `eval_per_class` in dev and test. With `missing`, the release's two absent
    clips (train dia125_utt3, dev dia110_utt7) are in the CSVs but not on disk. With
    `by_class`, a clip's test pattern follows its emotion."""
    from emotionclip.evaluation.datasets.meld import COLUMNS, EMOTIONS, VIDEO_DIRS

    root = Path(root)
    base = root / "MELD.Raw"
    k = 0
    for split, n in (("train", per_class), ("dev", eval_per_class), ("test", eval_per_class)):
        vdir = base / VIDEO_DIRS[split][0]
        rows = []
        for d, emo in enumerate(EMOTIONS):
            for u in range(n):
                rows.append([len(rows) + 1, f"Line {d} {u}\u2019s", "Joey", emo, "neutral", d, u, 1, 1,
                             "0:10:44,769", "0:10:46,101"])
                video(vdir / f"dia{d}_utt{u}.mp4", d if by_class else k)
                k += 1
        if missing and split in ("train", "dev"):
            d, u = (125, 3) if split == "train" else (110, 7)
            rows.append([len(rows) + 1, "gone", "Ross", "joy", "positive", d, u, 1, 1, "0:00:01,000", "0:00:02,500"])
        base.mkdir(parents=True, exist_ok=True)
        # cp1252: the release's CSVs carry such bytes (the curly apostrophe above)
        with open(base / f"{split}_sent_emo.csv", "w", newline="", encoding="cp1252") as f:
            wr = csv.writer(f)
            wr.writerow(COLUMNS)
            wr.writerows(rows)
    return root


def make_bold(root: Path, n_train: int = 6, n_val: int = 4, seed: int = 0, positives: int | None = None,
              youtube_ids: bool = False) -> Path:
    """BOLD_public: annotations/{train,val}.csv without header, videos/, joints/*.npy.
    Default: random category scores (one forced positive per clip). With `positives`,
    clip i scores >= 0.5 exactly on `spread_labels(i, positives, 26)` and its test
    pattern follows the first of them. With `youtube_ids`, clips sit under
    `videos/003/<11-character id>.mp4/<clip>.mp4` like the release."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    ids = np.random.default_rng(seed + 1)  # its own stream: the default layout stays as it was
    k = 0
    for split, n in (("train", n_train), ("val", n_val)):
        rows = []
        for i in range(n):
            rel = f"003/{_youtube_like_id(ids)}.mp4/{i:04d}.mp4" if youtube_ids else f"003/clip{split}{i}.mp4/{i:04d}.mp4"
            pos = spread_labels(i, positives, len(BOLD_CATEGORIES)) if positives else []
            video(root / "videos" / rel, pos[0] if pos else k, duration=1.0, w=80, h=60, fps=10)
            k += 1
            # joints for persons 0 and 1 on every native frame (10 frames), starting at frame 500
            jrows = []
            for f in range(10):
                for pid in (0, 1):
                    pts = np.zeros((18, 3))
                    pts[:, 0] = rng.uniform(10 + 30 * pid, 30 + 30 * pid, 18)
                    pts[:, 1] = rng.uniform(5, 50, 18)
                    pts[:, 2] = 0.9
                    pts[3] = 0  # an undetected joint
                    jrows.append(np.concatenate([[500 + f, pid], pts.ravel()]))
            jp = root / "joints" / f"{rel[:-4]}.npy"
            jp.parent.mkdir(parents=True, exist_ok=True)
            np.save(jp, np.asarray(jrows))
            if positives:
                scores = rng.uniform(0, 0.45, 26)
                scores[pos] = rng.uniform(0.55, 1.0, len(pos))
            else:
                scores = rng.uniform(0, 1, 26)
                scores[i % 26] = 0.9  # every clip is positive for at least one class
            rows.append([rel, 0, 500, 509, *np.round(scores, 3), *np.round(rng.uniform(1, 10, 3), 2),
                         "Male", "Adult", "White", 0.8])
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        with open(root / "annotations" / f"{split}.csv", "w", newline="") as f:
            csv.writer(f).writerows(rows)
    return root


def make_emotic_preprocessed(root: Path, n: int = 4, missing: str | None = "val", positives: int | None = None,
                             seed: int = 1) -> Path:
    """annotations_pre/{split}.csv + *_cat_arr.npy + *_cont_arr.npy, images under
    emotic/<Folder>/; the last image of split `missing` is absent. Default labels:
    classes i and i+3; with `positives`, `spread_labels(i, positives, 26)` and an
    image colour that follows the first of them."""
    import pandas as pd
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    pre = root / "annotations_pre"
    pre.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        rows, cats, conts = [], [], []
        for i in range(n):
            name = f"{split}_{i}.jpg"
            img = (rng.uniform(0, 255, (40, 60, 3))).astype(np.uint8)
            y = np.zeros(26, np.float32)
            if positives:
                pos = spread_labels(i, positives, 26)
                y[pos] = 1
                hue = np.asarray([(pos[0] * 37) % 256, (pos[0] * 91) % 256, (pos[0] * 53) % 256], np.float64)
                img = (0.3 * img + 0.7 * hue).astype(np.uint8)
            else:
                y[[i % 26, (i + 3) % 26]] = 1
            p = root / "emotic" / "mscoco" / "images" / name
            p.parent.mkdir(parents=True, exist_ok=True)
            if not (missing == split and i == n - 1):
                Image.fromarray(img).save(p)
            rows.append({"Index": i, "Folder": "mscoco/images", "Filename": name, "Image Size": "[60, 40]",
                         "BBox": "[5, 4, 40, 35]", "Categorical_Labels": "[]", "Continuous_Labels": "[5, 5, 5]",
                         "Gender": "M", "Age": "A"})
            cats.append(y)
            conts.append([5, 6, 7])
        pd.DataFrame(rows).to_csv(pre / f"{split}.csv", index=False)
        np.save(pre / f"{split}_cat_arr.npy", np.stack(cats))
        np.save(pre / f"{split}_cont_arr.npy", np.asarray(conts, np.float32))
    return root


def make_emotic_mat(root: Path) -> Path:
    """Annotations/Annotations.mat with the official struct layout (train: one
    annotator; val/test: several annotators + combined_categories)."""
    import scipy.io

    root = Path(root)

    def person(cats, box, combined=None):
        d = {"body_bbox": np.asarray(box, float),
             "annotations_continuous": {"valence": 5.0, "arousal": 6.0, "dominance": 7.0},
             "gender": "Male", "age": "Adult"}
        if combined is None:
            d["annotations_categories"] = {"categories": np.asarray(cats, dtype=object)}
        else:
            d["annotations_categories"] = np.asarray(
                [{"categories": np.asarray(c, dtype=object)} for c in cats], dtype=object)
            d["combined_categories"] = np.asarray(combined, dtype=object)
            d["combined_continuous"] = {"valence": 4.0, "arousal": 5.0, "dominance": 6.0}
        return d

    def entry(name, persons):
        return {"filename": name, "folder": "framesdb/images", "image_size": {"n_col": 60, "n_row": 40},
                "original_database": "framesdb", "person": np.asarray(persons, dtype=object)
                if len(persons) > 1 else persons[0]}

    train = np.empty(2, dtype=object)
    train[0] = entry("a.jpg", [person(["Peace", "Happiness"], [1, 2, 30, 35]),
                               person(["Anger"], [20, 1, 55, 39])])
    train[1] = entry("b.jpg", [person(["Doubt/Confusion"], [0, 0, 20, 20])])
    val = np.empty(1, dtype=object)
    val[0] = entry("c.jpg", [person([["Fear"], ["Fear", "Pain"]], [3, 3, 30, 30], combined=["Fear", "Pain"])])
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(root / "Annotations" / "Annotations.mat", {"train": train, "val": val, "test": val})
    return root


def make_moviegraphs(root: Path, clips: int | None = None, positives: int | None = None) -> Path:
    """split.json, emotion_labels.json, scene/shot boundaries and one short movie per split.
    Default: 3 shots and 2 clips per movie, labels in several spellings (a mapped word,
    an unknown one). With `clips`, each movie has that many one-second scenes of one
    shot each, clip i labelled `spread_labels(i, positives, 26)` (category names, with
    the release's "Doubt/Conf" spelling and one mapped emotion word among them)."""
    root = Path(root)
    movies = {"train": ["tt0000001"], "val": ["tt0000002"], "test": ["tt0000003"]}
    (root / "mg" / "py3loader").mkdir(parents=True, exist_ok=True)
    (root / "mg" / "split.json").write_text(json.dumps(movies))
    vb = root / "mg_videoinfo" / "video_boundaries"
    sb = root / "mg_videoinfo" / "scene_boundaries"
    vb.mkdir(parents=True, exist_ok=True)
    sb.mkdir(parents=True, exist_ok=True)
    labels: dict[str, dict[str, list[str]]] = {}
    spelled = {"Doubt/Confusion": "Doubt/Conf", "Happiness": "cheerful"}
    for i, (split, ms) in enumerate(movies.items()):
        m = ms[0]
        if clips is None:
            video(root / "videos" / f"{m}.mp4", i, duration=3.0, w=64, h=48, fps=10)
            # 3 shots: cuts at native frames 10 and 20 (10 fps): shots [0,9], [10,19], [20, end)
            (vb / f"{m}.videvents").write_text("CVideoEvents\n10 1.0 CUT\n20 2.0 CUT\n")
            (sb / f"{m}.scenes.gt").write_text("1 1 1\n2 3 1 \n")
            labels[m] = {"0": ["Happiness", "Doubt/Conf"], "1": ["cheerful", "zzz-unknown"]}
            continue
        k = positives or positives_per_sample(clips, len(EMOTIC_CATEGORIES))
        video(root / "videos" / f"{m}.mp4", i, duration=float(clips), w=64, h=48, fps=10)
        # a cut every 10 native frames (1 s at 10 fps); scene c is shot c+1; the shot after the
        # last cut is empty, so every labelled scene ends at a cut
        cuts = "".join(f"{10 * c} {c}.0 CUT\n" for c in range(1, clips + 1))
        (vb / f"{m}.videvents").write_text("CVideoEvents\n" + cuts)
        (sb / f"{m}.scenes.gt").write_text("".join(f"{c + 1} {c + 1} 1\n" for c in range(clips)))
        labels[m] = {str(c): [spelled.get(EMOTIC_CATEGORIES[j], EMOTIC_CATEGORIES[j])
                              for j in spread_labels(c, k, len(EMOTIC_CATEGORIES))] for c in range(clips)}
    (root / "mg" / "py3loader" / "emotion_labels.json").write_text(json.dumps(labels))
    (root / "label_map.json").write_text(json.dumps({"cheerful": "Happiness"}))
    return root


def make_liris(root: Path, seconds: int = 4, missing_movie: bool = True, seed: int = 2) -> Path:
    """MediaEval 2018 annotations (Time, Valence, Arousal per second) for two dev and
    two test movies of `seconds` each; one test movie's video is absent when
    `missing_movie`."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    plan = {"MEDIAEVAL18-DevSet-Valence_Arousal-annotations": ["MEDIAEVAL18_00", "MEDIAEVAL18_01"],
            "MEDIAEVAL18-TestSet-Valence_Arousal-annotations": ["MEDIAEVAL18_54", "MEDIAEVAL18_55"]}
    k = 0
    for folder, movies in plan.items():
        adir = root / "annotations" / folder / "annotations"
        adir.mkdir(parents=True, exist_ok=True)
        for m in movies:
            lines = ["Time\tValence\tArousal"] + [
                f"{t}\t{rng.uniform(-1, 1):.4f}\t{rng.uniform(-1, 1):.4f}" for t in range(seconds)]
            (adir / f"{m}_Valence-Arousal.txt").write_text("\n".join(lines) + "\n")
            if not (missing_movie and m == "MEDIAEVAL18_55"):
                video(root / "movies" / f"{m}.mp4", k, duration=float(seconds), w=64, h=48, fps=10)
            k += 1
    return root


def _build(name: str, root: Path, seed: int, n: int) -> None:
    """The complete, balanced miniature of `name` (see make_sample)."""
    k = positives_per_sample(n, 26)
    if name == "meld":
        from emotionclip.evaluation.datasets.meld import EMOTIONS

        per = math.ceil(n / len(EMOTIONS))
        make_meld(root, per_class=max(2, per), eval_per_class=max(2, per), missing=False, by_class=True)
    elif name == "bold":
        make_bold(root, n_train=n, n_val=n, seed=seed, positives=k, youtube_ids=True)
    elif name == "emotic":
        make_emotic_preprocessed(root, n=n, missing=None, positives=k, seed=seed)
    elif name == "moviegraphs":
        make_moviegraphs(root, clips=n, positives=k)
    elif name == "liris":
        make_liris(root, seconds=math.ceil(n / 2), missing_movie=False, seed=seed)
    else:  # a dataset module without a sample builder
        raise ValueError(f"no sample builder for {name!r}; expected one of {', '.join(DATASETS)}")


def make_sample(dataset: str, out_dir: str | os.PathLike, *, seed: int = 0,
                n_per_split: int = SIZES["small"]) -> Path:
    """Write a miniature `dataset` (bold, moviegraphs, meld, emotic, liris or an alias)
    in its published layout into `out_dir` (created; must not exist or be empty) and
    return the folder to give as the dataset root. About `n_per_split` samples per
    split (MELD: a multiple of its 7 emotions, at least 2 each); every class is
    present at least twice in every split. The folder is written under a temporary
    name and renamed when complete, with `MARKER` describing it, so an interrupted
    call leaves no half sample behind. Deterministic for a given seed."""
    from emotionclip.core.io import atomic_path

    name = get_spec(dataset).name  # KeyError naming the known datasets
    if n_per_split < MIN_PER_SPLIT:
        raise ValueError(f"n_per_split must be at least {MIN_PER_SPLIT} (got {n_per_split})")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty folder")
    info: dict[str, Any] = {"dataset": name, "seed": seed, "n_per_split": n_per_split,
                            "synthetic": True,
                            "made_by": "emotionclip.evaluation.sample.make_sample (emotionclip eval make-sample)",
                            "note": "synthetic test patterns, not the real benchmark: numbers from it mean nothing"}
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        _build(name, tmp, seed, n_per_split)
        info["splits"] = {s: len(get_spec(name).load(tmp, s)) for s in get_spec(name).splits}
        (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")
    return out  # (an empty folder at `out` is replaced by the rename)


def is_sample(root: str | os.PathLike) -> bool:
    """Whether `root` is a complete folder written by make_sample."""
    return (Path(root) / MARKER).is_file()


def ensure_sample(dataset: str, root: str | os.PathLike, *, n_per_split: int = SIZES["small"]) -> bool:
    """Write the miniature `dataset` to `root` unless a complete sample is there;
    whether this call wrote it. Two runs may race for the same folder: the loser's
    rename fails, and that is fine when the winner's sample is complete."""
    if is_sample(root):
        return False
    try:
        make_sample(dataset, root, n_per_split=n_per_split)
    except OSError:
        if not is_sample(root):  # not a concurrent run that finished first: a real folder is in the way
            raise
        return False
    return True


def sample_roots(datasets: Iterable[str], data_root: str | None = None) -> dict[str, str]:
    """Benchmark name (canonical) -> its generated sample's folder,
    `<data root>/eval-samples/<name>`, the data root being `data_root` or the catalog's."""
    names = [get_spec(d).name for d in datasets]  # KeyError naming the known datasets, before the catalog
    if not names:
        return {}
    from emotionclip.core.catalog import load_catalog

    base = load_catalog(data_root=data_root).root
    if "://" in base:
        raise ValueError(f"samples are written with ffmpeg and need a local data root, not {base}")
    return {name: str(Path(base) / SAMPLES_DIR / name) for name in names}
