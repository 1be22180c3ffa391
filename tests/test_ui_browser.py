"""The dataset card as a user sees it in the Prefect UI, in a real browser.

A real local Prefect server (temporary home, free port) runs build-tv-dataset on a 3-video
sample corpus (tiny models, in a subprocess pointed at that server); the test finds the
run's `dataset-card` markdown artifact through the Prefect client, opens its page in the
UI the same server serves (`/artifacts/artifact/<id>`) in headless Chromium driven by
playwright, and checks that every plot of the card is an <img> there and that every image
on the page loaded (`naturalWidth > 0`; a plot linked by a path relative to the card folder
is a broken image in the UI).

Output: a full-page screenshot of the artifact page, `test-output/ui/dataset-card.png` at
the repository root (gitignored), rewritten by every run.

Needs the system's Chromium (`chromium` on PATH; Debian: `apt-get install -y chromium`,
which `.ci/run` does when it is missing). Playwright's own browser downloads are not used.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys

import pytest

from loopback import free_port
from deployments import local
from emotionclip.core.catalog import REPO_ROOT

pytestmark = pytest.mark.slow

SCREENSHOT = REPO_ROOT / "test-output" / "ui" / "dataset-card.png"
# The sample-tiny deployment's overrides (deployments/definitions.py): random tiny models
# need the looser neutral threshold for any clip to pass; the sample videos are 320x240.
OVERRIDES = {"stages.filter.max_neutral": 0.5, "stages.humans.imgsz": 320}
_BUILD = (
    "import json, sys\n"
    "from flows.build_tv_dataset import build_tv_dataset\n"
    "print(json.dumps(build_tv_dataset(source='folder', folder=sys.argv[1], data_root=sys.argv[2],\n"
    "                                  profile='tiny', overrides=json.loads(sys.argv[3]))))\n"
)


def _chromium() -> str:
    """The system's Chromium; missing is a failure with the fix, not a skip."""
    path = shutil.which("chromium")
    if not path:
        pytest.fail("chromium is not on PATH: the Prefect UI check needs the system's Chromium. "
                    "Install it (Debian: `sudo apt-get install -y chromium`; `.ci/run` does this in CI), "
                    "then rerun `make test`.", pytrace=False)
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A local Prefect server after one build-tv-dataset run against it: (port, data root, env)."""
    from emotionclip.sample import make_sample_corpus

    tmp = tmp_path_factory.mktemp("ui-browser")
    home, port = tmp / "prefect-home", free_port()
    make_sample_corpus(tmp / "corpus", n_videos=3, duration_s=24.0)
    local.start_server(home, port)
    try:
        env = local.server_env(home, port)
        out = subprocess.run([sys.executable, "-c", _BUILD, str(tmp / "corpus"), str(tmp / "data"),
                              json.dumps(OVERRIDES)], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=900)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        yield port, tmp / "data", env
    finally:
        local.stop(home)


def _card_artifact(api_url: str):
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def main():
        async with PrefectClient(api=api_url) as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["dataset-card"])))

    return asyncio.run(main())


def test_dataset_card_renders_with_its_plots_in_the_prefect_ui(request):
    chromium = _chromium()  # before the build: a missing browser fails at once
    port, data, env = request.getfixturevalue("built")
    artifacts = _card_artifact(env["PREFECT_API_URL"])
    assert len(artifacts) == 1 and artifacts[0].type == "markdown", artifacts
    plots = sorted(p.stem for p in (data / "card" / "plots").glob("*.png"))
    # the four clip plots and the growth plot (the run wrote a runs table)
    assert plots == ["durations", "emotions", "examples", "growth", "neutral"]

    from playwright.sync_api import sync_playwright

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/artifacts/artifact/{artifacts[0].id}", wait_until="load")
            # The card's markdown, rendered (its title is the first heading).
            page.get_by_role("heading", name="EmotionCLIP TV dataset").wait_for(timeout=60_000)
            for name in plots:
                page.locator(f'img[alt="{name}"]').first.wait_for(state="attached", timeout=30_000)
            # The UI scrolls inside a container, so a full-page screenshot is one viewport:
            # grow the viewport to the tallest scrolled content (all images are then on screen).
            height = page.evaluate(
                "() => Math.max(document.documentElement.scrollHeight, ...Array.from(document.querySelectorAll('*'))"
                ".filter(e => ['auto', 'scroll'].includes(getComputedStyle(e).overflowY)).map(e => e.scrollHeight))")
            page.set_viewport_size({"width": 1400, "height": min(max(1000, height + 100), 16_000)})
            # Every image has finished loading or failing before it is judged.
            page.wait_for_function("() => Array.from(document.images).every(i => i.complete)", timeout=60_000)
            images = page.evaluate(
                "() => Array.from(document.images).map(i => ({alt: i.alt, src: (i.getAttribute('src') || '').slice(0, 40),"
                " width: i.naturalWidth}))")
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            browser.close()
    alts = [i["alt"] for i in images]
    assert all(alts.count(name) == 1 for name in plots), images
    broken = [i for i in images if i["width"] <= 0]
    assert not broken, f"images that did not load in the UI: {broken} (screenshot: {SCREENSHOT})"


def _batch_run(api_url: str):
    """The build's one batch run (batch-0001-of-0001) and its task runs."""
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName, TaskRunFilter, TaskRunFilterFlowRunId

    async def main():
        async with PrefectClient(api=api_url) as client:
            [run] = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                name=FlowRunFilterName(any_=["batch-0001-of-0001"])))
            tasks = await client.read_task_runs(task_run_filter=TaskRunFilter(
                flow_run_id=TaskRunFilterFlowRunId(any_=[run.id])))
            return run, tasks

    return asyncio.run(main())


def test_the_batch_run_page_lists_a_task_run_per_stage(request):
    """The batch run's page in the UI, as a user opens it: its task runs are the stages,
    words, frames, sentences, sentiment, humans and clips, each over the batch's videos."""
    chromium = _chromium()
    port, _, env = request.getfixturevalue("built")
    run, tasks = _batch_run(env["PREFECT_API_URL"])
    stages = ("words", "frames", "sentences", "sentiment", "humans", "clips")
    names = [f"{s}-batch-0001-of-0001" for s in stages]
    assert sorted(t.name for t in tasks) == sorted(names)

    from playwright.sync_api import sync_playwright

    shot = SCREENSHOT.parent / "batch-run.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            page.goto(f"http://127.0.0.1:{port}/runs/flow-run/{run.id}?tab=Task+Runs", wait_until="load")
            for name in names:
                page.get_by_text(name, exact=True).first.wait_for(timeout=60_000)
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
