"""Miniature benchmark folders in each dataset's real published layout, for the
evaluation tests (synthetic videos from emotionclip.sample.make_test_video)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from emotionclip.evaluation.datasets.base import BOLD_CATEGORIES, EMOTIC_CATEGORIES
from emotionclip.sample import make_test_video

SOURCES = ["testsrc2", "smptebars", "rgbtestsrc", "testsrc", "yuvtestsrc", "pal100bars", "smptehdbars"]


def video(path: Path, i: int, duration: float = 1.0, w: int = 64, h: int = 48, fps: float = 10) -> Path:
    return make_test_video(path, duration_s=duration, width=w, height=h, fps=fps, source=SOURCES[i % len(SOURCES)])


def make_meld(root: Path, per_class: int = 2, missing: bool = True) -> Path:
    """MELD.Raw with train/dev/test CSVs and clips; the release's two missing clips
    (train dia125_utt3, dev dia110_utt7) are in the CSVs but not on disk."""
    from emotionclip.evaluation.datasets.meld import COLUMNS, EMOTIONS, VIDEO_DIRS

    base = root / "MELD.Raw"
    k = 0
    for split, n in (("train", per_class), ("dev", 1), ("test", 1)):
        vdir = base / VIDEO_DIRS[split][0]
        rows = []
        for d, emo in enumerate(EMOTIONS):
            for u in range(n):
                rows.append([len(rows) + 1, f"Line {d} {u}\u2019s", "Joey", emo, "neutral", d, u, 1, 1,
                             "0:10:44,769", "0:10:46,101"])
                video(vdir / f"dia{d}_utt{u}.mp4", k)
                k += 1
        if missing and split in ("train", "dev"):
            d, u = (125, 3) if split == "train" else (110, 7)
            rows.append([len(rows) + 1, "gone", "Ross", "joy", "positive", d, u, 1, 1, "0:00:01,000", "0:00:02,500"])
        base.mkdir(parents=True, exist_ok=True)
        with open(base / f"{split}_sent_emo.csv", "w", newline="", encoding="cp1252") as f:
            wr = csv.writer(f)
            wr.writerow(COLUMNS)
            wr.writerows(rows)
    return root


def make_bold(root: Path, n_train: int = 6, n_val: int = 4, seed: int = 0) -> Path:
    """BOLD_public: annotations/{train,val}.csv without header, videos/, joints/*.npy."""
    rng = np.random.default_rng(seed)
    k = 0
    for split, n in (("train", n_train), ("val", n_val)):
        rows = []
        for i in range(n):
            rel = f"003/clip{split}{i}.mp4/{i:04d}.mp4"
            video(root / "videos" / rel, k, duration=1.0, w=80, h=60, fps=10)
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
            scores = rng.uniform(0, 1, 26)
            scores[i % 26] = 0.9  # every clip is positive for at least one class
            rows.append([rel, 0, 500, 509, *np.round(scores, 3), *np.round(rng.uniform(1, 10, 3), 2),
                         "Male", "Adult", "White", 0.8])
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        with open(root / "annotations" / f"{split}.csv", "w", newline="") as f:
            csv.writer(f).writerows(rows)
    return root


def make_emotic_preprocessed(root: Path, n: int = 4, missing: str | None = "val") -> Path:
    """annotations_pre/{split}.csv + *_cat_arr.npy + *_cont_arr.npy, images under emotic/<Folder>/."""
    from PIL import Image

    rng = np.random.default_rng(1)
    pre = root / "annotations_pre"
    pre.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        rows, cats, conts = [], [], []
        for i in range(n):
            name = f"{split}_{i}.jpg"
            img = (rng.uniform(0, 255, (40, 60, 3))).astype(np.uint8)
            p = root / "emotic" / "mscoco" / "images" / name
            p.parent.mkdir(parents=True, exist_ok=True)
            if not (missing == split and i == n - 1):
                Image.fromarray(img).save(p)
            rows.append({"Index": i, "Folder": "mscoco/images", "Filename": name, "Image Size": "[60, 40]",
                         "BBox": "[5, 4, 40, 35]", "Categorical_Labels": "[]", "Continuous_Labels": "[5, 5, 5]",
                         "Gender": "M", "Age": "A"})
            y = np.zeros(26, np.float32)
            y[[i % 26, (i + 3) % 26]] = 1
            cats.append(y)
            conts.append([5, 6, 7])
        import pandas as pd

        pd.DataFrame(rows).to_csv(pre / f"{split}.csv", index=False)
        np.save(pre / f"{split}_cat_arr.npy", np.stack(cats))
        np.save(pre / f"{split}_cont_arr.npy", np.asarray(conts, np.float32))
    return root


def make_emotic_mat(root: Path) -> Path:
    """Annotations/Annotations.mat with the official struct layout (train: one
    annotator; val/test: several annotators + combined_categories)."""
    import scipy.io

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


def make_moviegraphs(root: Path) -> Path:
    """split.json, emotion_labels.json, scene/shot boundaries and one short movie per split."""
    movies = {"train": ["tt0000001"], "val": ["tt0000002"], "test": ["tt0000003"]}
    (root / "mg" / "py3loader").mkdir(parents=True, exist_ok=True)
    (root / "mg" / "split.json").write_text(json.dumps(movies))
    labels = {}
    for i, (split, ms) in enumerate(movies.items()):
        m = ms[0]
        video(root / "videos" / f"{m}.mp4", i, duration=3.0, w=64, h=48, fps=10)
        # 3 shots: cuts at native frames 10 and 20 (10 fps): shots [0,9], [10,19], [20, end)
        vb = root / "mg_videoinfo" / "video_boundaries"
        sb = root / "mg_videoinfo" / "scene_boundaries"
        vb.mkdir(parents=True, exist_ok=True)
        sb.mkdir(parents=True, exist_ok=True)
        (vb / f"{m}.videvents").write_text("CVideoEvents\n10 1.0 CUT\n20 2.0 CUT\n")
        (sb / f"{m}.scenes.gt").write_text("1 1 1\n2 3 1 \n")
        labels[m] = {"0": ["Happiness", "Doubt/Conf"], "1": ["cheerful", "zzz-unknown"]}
    (root / "mg" / "py3loader" / "emotion_labels.json").write_text(json.dumps(labels))
    (root / "label_map.json").write_text(json.dumps({"cheerful": "Happiness"}))
    return root


def make_liris(root: Path, seconds: int = 4, missing_movie: bool = True) -> Path:
    """MediaEval 2018 annotations (Time, Valence, Arousal per second) for dev and
    test movies; one test movie's video is absent when `missing_movie`."""
    rng = np.random.default_rng(2)
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


CATEGORIES = {"bold": BOLD_CATEGORIES, "emotic": EMOTIC_CATEGORIES}
