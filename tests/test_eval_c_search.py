"""Choosing C as appendix B.3 did: a seeded random search, scored on the split B.3
prescribes per benchmark, every trial reported and the search cached beside the
features; the grid and the authors' preset as the other two modes."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from typer.testing import CliRunner

from emotionclip.evaluation import sample as L
from emotionclip.evaluation import metrics as M
from emotionclip.evaluation import probes as P
from emotionclip.evaluation.datasets import NAMES, Sample, get_spec
from emotionclip.evaluation.features import FeatureConfig, FeatureStats
from emotionclip.evaluation.run import SplitFeatures, load_model, probe_dataset, run_linear_probe

# The CLI's call for --profile tiny: the same lru_cache entry as the other evaluation tests.
TINY = (None, None, "tiny", "cpu", False, None)
FEW = 6  # trials for the probe-level tests: enough to show the protocol, quick to fit


def _multilabel(n: int, seed: int, k: int = 5, d: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = np.random.default_rng(99).normal(size=(d, k))  # one labelling rule for every split
    x = rng.normal(size=(n, d))
    y = (x @ w + 0.7 * rng.normal(size=(n, k)) > 0.5).astype(int)
    y[0] = 1  # every class has a positive
    return x, y


def _multiclass(n: int, seed: int, k: int = 7, d: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = np.random.default_rng(98).normal(size=(d, k))
    x = rng.normal(size=(n, d))
    y = np.argmax(x @ w + rng.normal(size=(n, k)), axis=1)
    y[:k] = np.arange(k)  # every class is present
    return x, y


def _garbage(x: np.ndarray, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).normal(scale=50.0, size=x.shape)


def _bold(config: P.ProbeConfig, val: tuple[np.ndarray, np.ndarray] | None, cache_dir=None) -> P.ProbeResult:
    train = _multilabel(60, 0)
    report = val if val is not None else _multilabel(30, 1)
    return P.classification_probe("bold", "multilabel", 5, 3.16, train, val, {"val": report}, config,
                                  val_name="val", cache_dir=cache_dir)


def _meld(config: P.ProbeConfig, dev: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray] | None = None,
          cache_dir=None) -> P.ProbeResult:
    return P.classification_probe("meld", "multiclass", 7, 8.0, _multiclass(80, 2), dev,
                                  {"dev": dev, "test": test or _multiclass(30, 4)}, config, val_name="dev",
                                  cache_dir=cache_dir)


# -- the random search ------------------------------------------------------------------

def test_paper_mode_is_the_default_with_stated_range_and_trials():
    cfg = P.ProbeConfig()
    assert cfg.c_mode == "paper" and cfg.c_range == P.PAPER_C_RANGE and cfg.c_trials == P.PAPER_C_TRIALS
    assert P.PAPER_C_RANGE == (1e-3, 1e2) and P.PAPER_C_TRIALS == 32
    res = _meld(cfg, _multiclass(40, 3))
    assert res.c_mode == "paper" and len(res.c_trials) == 32
    assert [t["C"] for t in res.c_trials] == P.paper_trials(P.PAPER_C_RANGE, 32, P.DEFAULT_SEED)
    # the chosen C is the trial with the best primary metric (MELD: weighted F1), ties to the smaller C
    best = max(res.c_trials, key=lambda t: (t["score"], -t["C"]))
    assert res.c == best["C"] and res.search_scores[res.c] == best["score"]


def test_random_search_is_reproducible_with_a_seed():
    dev = _multiclass(40, 3)
    a = _meld(P.ProbeConfig(c_trials=FEW, seed=11), dev)
    b = _meld(P.ProbeConfig(c_trials=FEW, seed=11), dev)
    assert a.c == b.c and a.c_trials == b.c_trials and a.metrics == b.metrics
    other = _meld(P.ProbeConfig(c_trials=FEW, seed=12), dev)
    assert not set(t["C"] for t in other.c_trials) & set(t["C"] for t in a.c_trials)


def test_trial_cs_are_log_uniform_within_the_range():
    lo, hi = 1e-3, 1e2
    cs = np.asarray(P.paper_trials((lo, hi), 4000, seed=5))
    assert ((cs >= lo) & (cs <= hi)).all()
    logs = np.log10(cs)
    # uniform in log10 C over [-3, 2]: a KS test against that, and each decade gets about a fifth
    assert stats.kstest(logs, stats.uniform(loc=-3, scale=5).cdf).pvalue > 0.01
    per_decade = np.histogram(logs, bins=np.arange(-3, 3))[0] / len(cs)
    np.testing.assert_allclose(per_decade, 0.2, atol=0.03)
    # a linear-uniform draw would put nearly everything in the top decade
    assert per_decade[-1] < 0.3
    # the probe's trials are those draws, within the configured range
    res = _meld(P.ProbeConfig(c_trials=FEW, c_range=(0.5, 5.0)), _multiclass(40, 3))
    assert all(0.5 <= t["C"] <= 5.0 for t in res.c_trials) and len(res.c_trials) == FEW


# -- the split B.3 prescribes, per dataset ------------------------------------------------

def test_the_search_split_table_follows_appendix_b3():
    for name in NAMES:
        spec = get_spec(name)
        if spec.task == "regression":  # LIRIS-ACCEDE: Ridge with default hyper-parameters, no C
            assert name not in P.C_SEARCH_SPLIT
            continue
        split = P.C_SEARCH_SPLIT[name]
        assert P.search_split(name, spec.val_split) == split
        if spec.val_split is None:
            assert split == P.HOLDOUT
        else:
            assert split == spec.val_split and split in spec.splits
    # BoLD's test labels are not public, so val is what the paper reports: the search holds out train
    assert P.C_SEARCH_SPLIT["bold"] == P.HOLDOUT and get_spec("bold").eval_splits == ("val",)
    assert (P.C_SEARCH_SPLIT["meld"], P.C_SEARCH_SPLIT["moviegraphs"], P.C_SEARCH_SPLIT["emotic"]) == ("dev", "val",
                                                                                                       "val")


def test_bold_search_never_sees_val_features():
    cfg = P.ProbeConfig(c_trials=FEW)
    plain = _bold(cfg, None)
    xv, yv = _multilabel(30, 1)
    with_val = _bold(cfg, (xv, yv))
    junk = _bold(cfg, (_garbage(xv), yv))
    assert plain.c_source == with_val.c_source == junk.c_source == "search:holdout0.2-of-train"
    assert plain.c == with_val.c == junk.c and plain.c_trials == with_val.c_trials == junk.c_trials
    # the val features do reach the reported metrics, just not the search
    assert junk.metrics["val"] != with_val.metrics["val"]
    # the trial scores are those of a fit on train's 80 % scored on its other 20 %
    xtr, ytr = _multilabel(60, 0)
    a, b = P.holdout_split(60, 0.2, P.DEFAULT_SEED)
    t = plain.c_trials[0]
    (p,) = P.fit_scores("multilabel", t["C"], xtr[a], ytr[a], [xtr[b]])
    assert t["score"] == pytest.approx(M.dataset_metrics("bold", ytr[b], p)["mAP"])


def test_meld_search_uses_dev_and_never_test():
    cfg = P.ProbeConfig(c_trials=FEW)
    dev = _multiclass(40, 3)
    res = _meld(cfg, dev)
    assert res.c_source == "search:dev" and res.search["split"] == "dev" and res.search["metric"] == "weighted_F1"
    # the trial scores are a fit on all of train scored on dev
    t = res.c_trials[1]
    (p,) = P.fit_scores("multiclass", t["C"], *_multiclass(80, 2), [dev[0]])
    assert t["score"] == pytest.approx(M.dataset_metrics("meld", dev[1], P._pad(p, 7))["weighted_F1"])
    # garbage dev features change the search; garbage test features do not
    assert _meld(cfg, (_garbage(dev[0]), dev[1])).c_trials != res.c_trials
    xt, yt = _multiclass(30, 4)
    junk_test = _meld(cfg, dev, test=(_garbage(xt), yt))
    assert junk_test.c_trials == res.c_trials and junk_test.c == res.c
    # without dev features there is nothing B.3 allows the search to use
    with pytest.raises(ValueError, match="dev split"):
        P.classification_probe("meld", "multiclass", 7, 8.0, _multiclass(80, 2), None, {"test": (xt, yt)}, cfg)


def _split(name: str, x: np.ndarray, y: np.ndarray, vad: bool = False) -> SplitFeatures:
    samples = [Sample(f"{name}{i}", name, f"/d/{name}{i}.mp4", "video", y[i],
                      aux={"vad": np.asarray([i % 3, 1.0, 2.0 + i % 2], np.float32)} if vad else {})
               for i in range(len(x))]
    return SplitFeatures(name, samples, x.astype(np.float32), FeatureStats())


def test_probe_dataset_gives_each_benchmark_its_search_split():
    cfg = P.ProbeConfig(c_trials=FEW)
    # BoLD: 26 categories; garbage val features change the reported numbers, never C
    xtr, ytr = _multilabel(50, 0, k=26, d=16)
    xv, yv = _multilabel(20, 1, k=26, d=16)
    clean = {"train": _split("train", xtr, ytr, vad=True), "val": _split("val", xv, yv, vad=True)}
    junk = dict(clean, val=_split("val", _garbage(xv), yv, vad=True))
    r1, _ = probe_dataset("bold", clean, cfg)
    r2, _ = probe_dataset("bold", junk, cfg)
    assert r1.c_source == "search:holdout0.2-of-train" and (r1.c, r1.c_trials) == (r2.c, r2.c_trials)
    assert r1.metrics["val"] != r2.metrics["val"]
    # MELD: the dev split
    xtr, ytr = _multiclass(60, 2)
    data = {"train": _split("train", xtr, ytr), "dev": _split("dev", *_multiclass(30, 3)),
            "test": _split("test", *_multiclass(30, 4))}
    r, _ = probe_dataset("meld", data, cfg)
    assert r.c_source == "search:dev" and len(r.c_trials) == FEW


# -- the other two modes ----------------------------------------------------------------

def test_grid_and_preset_modes_still_work():
    dev = _multiclass(40, 3)
    grid = _meld(P.ProbeConfig(c_mode="grid", c_grid=(0.01, 1.0, 10.0)), dev)
    assert grid.c_mode == "grid" and [t["C"] for t in grid.c_trials] == [0.01, 1.0, 10.0]
    assert grid.c_source == "search:dev" and grid.c in (0.01, 1.0, 10.0)
    default_grid = _meld(P.ProbeConfig(c_mode="grid"), dev)
    assert [t["C"] for t in default_grid.c_trials] == list(P.DEFAULT_C_GRID)
    # the grid search's former name still means the grid (training configs may say it)
    assert P.ProbeConfig(c_mode="search").c_mode == "grid"  # type: ignore[arg-type]
    preset = _meld(P.ProbeConfig(c_mode="preset"), dev)
    assert (preset.c, preset.c_source, preset.c_mode, preset.c_trials) == (8.0, "preset", "preset", [])
    given = _meld(P.ProbeConfig(c=0.25), dev)
    assert (given.c, given.c_source, given.c_trials) == (0.25, "given", [])
    with pytest.raises(ValueError, match="c_mode"):
        P.ProbeConfig(c_mode="random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="c_range"):
        P.ProbeConfig(c_range=(10.0, 1.0))


# -- the search cache -------------------------------------------------------------------

def test_the_search_is_cached_and_a_rerun_does_not_search_again(tmp_path):
    cfg = P.ProbeConfig(c_trials=FEW, seed=3)
    dev = _multiclass(40, 3)
    first = _meld(cfg, dev, cache_dir=tmp_path)
    assert first.search_cached is False
    files = list((tmp_path / "c-search" / "meld").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["C"] == first.c
    again = _meld(cfg, dev, cache_dir=tmp_path)
    assert again.search_cached is True and again.notes["c_search"]["cached"] is True
    assert (again.c, again.c_trials, again.c_source) == (first.c, first.c_trials, first.c_source)
    assert again.metrics == first.metrics
    # another seed, trial count, range, mode or other features is another search
    for other in (P.ProbeConfig(c_trials=FEW, seed=4), P.ProbeConfig(c_trials=FEW + 1, seed=3),
                  P.ProbeConfig(c_trials=FEW, seed=3, c_range=(0.1, 10.0)), P.ProbeConfig(c_mode="grid", seed=3)):
        assert _meld(other, dev, cache_dir=tmp_path).search_cached is False
    assert _meld(cfg, (dev[0] + 0.01, dev[1]), cache_dir=tmp_path).search_cached is False
    assert len(list((tmp_path / "c-search" / "meld").glob("*.json"))) == 6
    # a torn cache file is searched again, not trusted
    files[0].write_text('{"C": 1')
    torn = _meld(cfg, dev, cache_dir=tmp_path)
    assert torn.search_cached is False and torn.c == first.c


# -- end to end: tiny model, miniature BoLD, CLI and flow --------------------------------

@pytest.fixture(scope="module")
def tiny():
    return load_model(*TINY)


@pytest.fixture(scope="module")
def bold_run(tmp_path_factory, tiny):
    """The default (paper) probe on a miniature BoLD through `run_linear_probe`, twice."""
    base = tmp_path_factory.mktemp("c-search-bold")
    root = L.make_bold(base / "bold", n_train=8, n_val=4)
    cache = base / "cache"
    kw = dict(feature_config=FeatureConfig(detector=None), cache_dir=cache)
    first = run_linear_probe("bold", root, tiny, base / "out1", **kw)
    second = run_linear_probe("bold", root, tiny, base / "out2", **kw)
    return root, cache, base, first, second


def test_end_to_end_default_paper_search_is_reported_and_cached(bold_run):
    root, cache, base, first, second = bold_run
    assert first["c_mode"] == "paper" and first["c_source"] == "search:holdout0.2-of-train"
    assert len(first["c_trials"]) == P.PAPER_C_TRIALS and first["c_search_cached"] is False
    assert first["C"] in [t["C"] for t in first["c_trials"]]
    assert first["c_search"]["range"] == list(P.PAPER_C_RANGE) and first["c_search"]["split"] == "holdout0.2-of-train"
    # the re-run: features and search both from the cache, the same C
    assert second["c_search_cached"] is True and all(v["computed"] == 0 for v in second["features"].values())
    assert (second["C"], second["c_trials"]) == (first["C"], first["c_trials"])
    # the results table carries the chosen C, the mode and every trial
    df = pd.read_parquet(base / "out1" / "results-bold.parquet")
    assert (df["C"] == first["C"]).all() and (df["c_mode"] == "paper").all() and (df["preset"] == "paper").all()
    trials = json.loads(df["c_trials"].iloc[0])
    assert [t["C"] for t in trials] == [t["C"] for t in first["c_trials"]]
    notes = json.loads(df["notes"].iloc[0])
    assert notes["c_search"]["trials"] == P.PAPER_C_TRIALS and notes["c_search"]["cached"] is False


def test_cli_accepts_c_mode_trials_and_seed(bold_run):
    from emotionclip.cli.eval import app

    root, cache, base, first, _ = bold_run
    runner = CliRunner()
    common = ["run", "bold", "--root", str(root), "--profile", "tiny", "--no-detect", "--cache-dir", str(cache)]

    def run(*extra: str) -> dict:
        res = runner.invoke(app, common + ["--out", str(base / "cli")] + list(extra))
        assert res.exit_code == 0, res.output
        return json.loads(res.stdout)

    # no --c-mode: the paper's search, the same one run_linear_probe cached
    default = run()
    assert default["c_mode"] == "paper" and default["c_search_cached"] is True and default["C"] == first["C"]
    seeded = run("--c-mode", "paper", "--c-trials", "4", "--seed", "7")
    assert len(seeded["c_trials"]) == 4 and seeded["c_search"]["seed"] == 7 and seeded["c_search_cached"] is False
    assert [t["C"] for t in seeded["c_trials"]] == P.paper_trials(P.PAPER_C_RANGE, 4, 7)
    grid = run("--c-mode", "grid")
    assert [t["C"] for t in grid["c_trials"]] == list(P.DEFAULT_C_GRID)
    assert grid["c_source"] == "search:holdout0.2-of-train"
    preset = run("--c-mode", "preset")
    assert (preset["C"], preset["c_source"], preset["c_trials"]) == (3.16, "preset", [])
    res = runner.invoke(app, common + ["--out", str(base / "cli"), "--c-mode", "random"])
    assert res.exit_code == 2 and "--c-mode must be paper|grid|preset" in res.stderr


def test_flow_parameter_defaults_to_the_paper_mode():
    from flows.linear_probe import linear_probe

    params = inspect.signature(linear_probe.fn).parameters
    assert params["c_mode"].default == "paper" == P.ProbeConfig().c_mode
    assert params["c_trials"].default == P.PAPER_C_TRIALS
