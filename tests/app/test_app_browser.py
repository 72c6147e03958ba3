"""End to end in a real headless Chromium (Debian's, driven by Playwright): `streamlit run app.py` on
127.0.0.1 over a copy of the demo home; open the demo run, read the scorecard, sign a decision as an approver,
see the canary weight move on Candidates. Screenshots go to test-artifacts/browser/."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import REPO, free_port, make_evaluation, run_cli, write_live_log

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = REPO / "test-artifacts" / "browser"
PASSWORD = "browser-pw-long-enough"


@pytest.fixture
def served(demo_home, tmp_path):
    """The app serving a copy of the demo home (with its key, an approver and an evaluation with intervals)."""
    if not Path(CHROMIUM).exists():  # `make test` installs it (system-deps): fail, do not skip
        pytest.fail(f"no chromium at {CHROMIUM}: run `make system-deps`")
    from workbench.ops.access import add_approver, approvers_path
    from workbench.store import Store

    home = tmp_path / "home"
    shutil.copytree(demo_home, home)
    add_approver(approvers_path(home), "alice", password=PASSWORD)
    run_id = json.loads((home / "demo.json").read_text())["replay"]["run_id"]
    with Store(home / "lake") as store:  # an evaluation with intervals, for the Compare page
        store.save_evaluation(run_id, {}, make_evaluation(run_id))
    (home / "policies").mkdir()  # the demo sample's few thousand rows cannot settle the default policy's gates
    (home / "policies" / "lenient.toml").write_text(
        'name = "lenient"\nmin_labeled_rows = 100\n[errors]\nmax_rate = 0.05\n'
    )
    port = free_port()
    env = os.environ | {"WORKBENCH_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = open(tmp_path / "streamlit.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            str(REPO / "app.py"),
            "--server.address",
            "127.0.0.1",
            "--server.port",
            str(port),
            "--server.headless",
            "true",
            "--browser.gatherUsageStats",
            "false",
        ],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "streamlit.log").read_text()[-3000:]
            try:
                if httpx.get(url + "/_stcore/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "streamlit did not answer /_stcore/health in 60 s"
            time.sleep(0.3)
        yield url, run_id, home
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.mark.browser
def test_review_and_sign_in_the_browser(served):
    from playwright.sync_api import expect, sync_playwright

    url, run_id, home = served
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    timings = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            expect.set_options(timeout=60_000)  # the first page load imports MLflow

            def shot(name: str) -> None:
                page.wait_for_timeout(500)  # let plotly finish drawing
                page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

            def visit(link: str, ready) -> None:
                t = time.perf_counter()
                page.get_by_test_id("stSidebarNavItems").get_by_role("link", name=link).click()
                expect(ready).to_be_visible()
                timings[link] = time.perf_counter() - t

            page.goto(url)
            expect(page.get_by_role("heading", name="Candidates")).to_be_visible()
            expect(page.get_by_text("flight-delay").first).to_be_visible()
            shot("1-candidates-before")

            # open the demo's classifier run (its regression run is newer, so shown first) and read its scorecard
            visit("Compare", page.get_by_role("heading", name="Scorecard"))
            page.locator("[data-testid='stSidebar'] [data-testid='stSelectbox']").filter(has_text="Replay run").click()
            page.get_by_role("option").filter(has_text=f"{run_id} ·").first.click()
            expect(page.get_by_text(run_id).first).to_be_visible()
            scorecard = page.locator("[data-testid='stTable']")
            expect(scorecard).to_contain_text("roc_auc")
            expect(scorecard).to_contain_text("+0.0200 [+0.0100, +0.0300]")
            shot("2-compare-scorecard")
            page.get_by_text("Curves", exact=True).click()
            expect(page.locator(".js-plotly-plot")).to_have_count(6)
            shot("3-compare-curves")

            # sign in as an approver, then sign the decision
            visit("Decide", page.get_by_text("Only an approver can sign decisions"))
            verdict = page.get_by_test_id("stMetricValue").first
            expect(verdict).to_have_text("HOLD")  # the default policy: too few rows to tell
            page.locator("[data-testid='stSelectbox']").filter(has_text="Policy").click()
            page.get_by_role("option", name="lenient.toml").click()
            expect(verdict).to_have_text("PROMOTE")
            sidebar = page.locator("[data-testid='stSidebar']")
            sidebar.get_by_role("textbox", name="Name").fill("alice")
            sidebar.get_by_role("textbox", name="Password").fill(PASSWORD)
            sidebar.get_by_role("button", name="Sign in").click()
            expect(sidebar.get_by_text("approver (password)")).to_be_visible()
            page.get_by_label("Justification (required, signed into the record)").fill("error rate flat")
            page.get_by_text("I have reviewed the evidence").click()
            shot("4-decide-before-signing")
            page.get_by_role("button", name="Sign and apply").click()
            expect(page.get_by_text("Signed decision")).to_be_visible()
            expect(page.get_by_text("weight 0% → 1%").first).to_be_visible()
            expect(page.get_by_text("You (alice) have signed this record")).to_be_visible()  # not the form again
            shot("5-decide-signed")

            # the weight moved, and the chain verifies
            visit("Candidates", page.get_by_text("chain verified"))
            weight = page.locator("[data-testid='stMetric']").filter(has_text="Canary weight")
            expect(weight).to_contain_text("1%")
            shot("6-candidates-after")
            visit("Audit", page.get_by_text("applied records of flight-delay verify"))
            shot("7-audit")
        finally:
            browser.close()
    (ARTIFACTS / "timings.json").write_text(json.dumps({k: round(v, 3) for k, v in timings.items()}, indent=2))
    from workbench.store import Store

    with Store(home / "lake", read_only=True) as store:
        decision = store.list_decisions("flight-delay")[0]  # newest first; the demo made the first
        assert decision["verdict"] == "PROMOTE" and decision["weight_after"] == 1
        record = json.loads(store.get_decision(decision["decision_id"])["record"])
        assert (record["signer"], record["justification"]) == ("alice", "error rate flat")


@pytest.mark.browser
def test_abort_a_live_canary_in_the_browser(served):
    from playwright.sync_api import expect, sync_playwright

    url, run_id, home = served
    lenient = str(home / "policies" / "lenient.toml")
    run_cli("decide", run_id, "--policy", lenient, "--justification", "errors flat", home=home)
    write_live_log(home)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.set_default_timeout(60_000)
            expect.set_options(timeout=60_000)
            page.goto(f"{url}/live?model=flight-delay")
            expect(page.get_by_role("heading", name="Live canary")).to_be_visible()
            weight = page.locator("[data-testid='stMetric']").filter(has_text="Canary weight")
            expect(weight).to_contain_text("1%")
            expect(page.get_by_text("Only an approver can pause or abort")).to_be_visible()
            sidebar = page.locator("[data-testid='stSidebar']")
            sidebar.get_by_role("textbox", name="Name").fill("alice")
            sidebar.get_by_role("textbox", name="Password").fill(PASSWORD)
            sidebar.get_by_role("button", name="Sign in").click()
            expect(sidebar.get_by_text("approver (password)")).to_be_visible()
            expect(page.locator(".js-plotly-plot")).to_have_count(2)  # the live window and the weight history
            page.wait_for_timeout(500)
            page.screenshot(path=str(ARTIFACTS / "8-live-canary.png"))
            page.get_by_label("Abort: reason (signed into the record)").fill("error budget burnt")
            page.get_by_role("button", name="Abort").click()
            expect(page.get_by_text("Abort: weight 0%")).to_be_visible()
            expect(weight).to_contain_text("0%")
            expect(page.get_by_text("Killed: held at 0%.")).to_be_visible()
            expect(page.locator(".js-plotly-plot")).to_have_count(2)
            page.get_by_role("heading", name="Weight history").scroll_into_view_if_needed()
            page.wait_for_timeout(1500)
            page.screenshot(path=str(ARTIFACTS / "9-live-canary-aborted.png"))
        finally:
            browser.close()
    status = json.loads(run_cli("canary", "status", "flight-delay", "--json", home=home).stdout)
    assert status["weight"] == 0 and status["killed"] and status["verified"]
