"""The Streamlit workbench, rendered headless with AppTest over a copy of the demo home: every page, the
sign-in (local approvers and OIDC), signing a decision, a replay launched from the app, and the pages reading
the last commit while another process writes."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from conftest import REPO, cli, make_evaluation, write_live_log
from workbench.ops.access import add_approver, approvers_path
from workbench.ops.progress import read_progress

APP = str(REPO / "app.py")
PASSWORD = "alice-pw-long-enough"
OPERATOR_PASSWORD = "olga-pw-long-enough"
LENIENT = """name = "lenient"
min_labeled_rows = 100
[errors]
max_rate = 0.05
"""  # no quality gates: the error rate alone, so the demo sample's few thousand rows can promote


@pytest.fixture(scope="module")
def app_home(demo_home, tmp_path_factory):
    """The demo home (with the signing key the demo created) plus approvers (alice: password; bob: OIDC e-mail),
    an operator (olga: password), a lenient policy file, and the demo run's drift report with Evidently's HTML."""
    from workbench.config import load_settings
    from workbench.drift.report import drift_run
    from workbench.store import Store

    home = tmp_path_factory.mktemp("app") / "home"
    shutil.copytree(demo_home, home)
    add_approver(approvers_path(home), "alice", password=PASSWORD)
    add_approver(approvers_path(home), "bob", email="bob@example.com")
    add_approver(approvers_path(home), "olga", password=OPERATOR_PASSWORD, role="operator")
    (home / "policies").mkdir()
    (home / "policies" / "lenient.toml").write_text(LENIENT)
    settings = load_settings(home)
    with Store(settings.db_path) as store:
        run_id = run_id_of(home)  # the classifier's run (the demo's regression run is newer)
        drift_run(store, run_id, html=home / "reports" / f"{run_id}_drift.html")
    return home


@pytest.fixture
def home(app_home, tmp_path, monkeypatch):
    """A fresh copy of the app home for one test (tests that sign or replay change it)."""
    h = tmp_path / "home"
    shutil.copytree(app_home, h)
    monkeypatch.setenv("WORKBENCH_HOME", str(h))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return h


@pytest.fixture(scope="module")
def shared_home(app_home, tmp_path_factory):
    """One copy of the app home for every test that only looks (no signing, replay or write of its own)."""
    h = tmp_path_factory.mktemp("viewed") / "home"
    shutil.copytree(app_home, h)
    return h


@pytest.fixture
def viewed_home(shared_home, monkeypatch):
    """:func:`shared_home` as the app's home: the pages' caches stay warm from one test to the next, as in a
    served app (the run summaries the pages store in its lake do not change what these tests read)."""
    monkeypatch.setenv("WORKBENCH_HOME", str(shared_home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return shared_home


def open_page(page: str | None = None, address: dict | None = None, **state) -> AppTest:
    """The app on ``page`` (default: Candidates), opened at an address with the query ``address``."""
    at = AppTest.from_file(APP, default_timeout=90)
    for k, v in state.items():
        setattr(at, k, v)
    if address is None and page in ("compare", "drift", "decide"):
        address = {"run": run_id_of(Path(os.environ["WORKBENCH_HOME"]))}  # the classifier's run, not the newest
    at.query_params.update(address or {})
    if page:  # before the first run: the page's own script runs, not the default page's first
        at.switch_page(f"pages/{page}.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def run_id_of(home: Path) -> str:
    import json

    return json.loads((home / "demo.json").read_text())["replay"]["run_id"]


def sign_in(at: AppTest, name: str, password: str) -> AppTest:
    at.sidebar.text_input(key="wb_signin_name").input(name)
    at.sidebar.text_input(key="wb_signin_password").input(password)
    next(b for b in at.sidebar.button if b.label == "Sign in").click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(at: AppTest) -> str:
    parts = [
        x.value
        for kind in ("markdown", "caption", "info", "success", "warning", "error", "subheader", "title")
        for x in getattr(at, kind)
    ]
    return "\n".join(str(p) for p in parts)


def test_candidates_page_lists_models_versions_and_weights(viewed_home):
    at = open_page()
    assert at.title[0].value == "Candidates"
    assert at.subheader[0].value == "flight-delay"
    assert "`@champion` → v1" in texts(at) and "`@challenger` → v2" in texts(at)
    versions = at.dataframe[0].value
    assert versions["version"].tolist() == ["2", "1"] and versions["aliases"].tolist() == ["challenger", "champion"]
    assert at.metric[0].label == "Canary weight" and at.metric[0].value == "0%"
    assert "Reviewing read-only" in texts(at)  # nobody signed in


@pytest.mark.parametrize("section", ["Scorecard", "Curves", "Latency", "Segments & windows", "Disagreements"])
def test_compare_page_sections(viewed_home, section):
    at = open_page("compare")
    at.segmented_control(key="wb_compare_section").set_value(section).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == "Compare" and run_id_of(viewed_home) in texts(at)
    charts = at.get("plotly_chart")
    if section == "Scorecard":
        table = at.table[0].value
        assert {"accuracy", "roc_auc", "log_loss"} <= set(table.index)
        assert at.metric[0].value.replace(",", "").isdigit()  # labelled rows
    elif section == "Curves":
        assert len(charts) == 6  # ROC, PR, calibration, paired outcomes, two confusion matrices
    elif section == "Latency":  # latency, its percentiles and what each model costs to run
        latency = at.dataframe[0].value
        assert len(charts) == 3 and latency["percentile"].tolist() == ["P50", "P95", "P99"]
        for role in ("baseline", "candidate"):  # microsecond latencies in µs, never "0.000"
            assert latency[role].str.fullmatch(r"[1-9][\d,]*(\.\d+)? (ns|µs|ms|s)").all(), latency[role].tolist()
        resources = at.dataframe[1].value
        assert resources.loc["artifact (MB)", "baseline"] > 0 and resources.loc["load (s)", "candidate"] > 0
        assert resources.loc["CPU s per 1,000 requests", "candidate"] > 0
        assert at.dataframe[2].value["part"].tolist() == ["cpu", "gpu", "memory", "total"]
        assert "Cost per million requests: cpu hour $0.04" in texts(at)
    elif section == "Segments & windows":
        assert len(charts) == 2 and at.selectbox(key="wb_segment").value == "carrier"
        at.radio(key="wb_period").set_value("month").run()
        at.selectbox(key="wb_segment").set_value("origin").run()
        assert not at.exception
        assert sorted(at.dataframe[0].value["key"]) == ["EWR", "JFK", "LGA"]
    else:
        assert int(at.metric[1].value.replace(",", "")) > 0  # classes differ somewhere
        df = at.dataframe[0].value
        assert 0 < len(df) <= 100 and (df.baseline_class != df.candidate_class).all() and "carrier" in df


def test_compare_scorecard_shows_intervals_and_p_values(home):
    from workbench.store import Store

    run_id = run_id_of(home)
    with Store(home / "lake") as store:
        store.save_evaluation(run_id, {}, make_evaluation(run_id))
    at = open_page("compare")
    table = at.table[0].value
    assert table.loc["roc_auc", "delta"] == "+0.0200 [+0.0100, +0.0300]"
    assert table.loc["roc_auc", "baseline"] == "0.7000 [0.6900, 0.7100]" and table.loc["roc_auc", "p-value"] == "0.01"
    assert at.metric[2].value == "95%"


def test_drift_page_with_the_evidently_report(viewed_home):
    at = open_page("drift")
    assert at.title[0].value == "Drift" and not at.info
    features = at.dataframe[0].value
    assert "temp" in set(features["feature"]) and features["drifted"].dtype == bool
    assert "Concept drift" in texts(at) and "Data quality (current rows)" in texts(at)
    assert len(at.get("plotly_chart")) >= 3  # per feature, mean score over time, concept timeline
    at.toggle(key="wb_evidently").set_value(True).run()
    assert not at.exception
    [frame] = at.get("iframe")
    html = viewed_home / "reports" / f"{run_id_of(viewed_home)}_drift.html"
    assert frame.proto.srcdoc == html.read_text(encoding="utf-8") and "root_metric_" in frame.proto.srcdoc
    at.button(key="wb_drift_run").click().run()
    assert "viewers cannot recompute drift: sign in as an operator or approver" in at.error[0].value


def sign_button(at: AppTest, label: str = "Sign and apply"):
    return next(b for b in at.button if b.label == label)


def signed_table(at: AppTest) -> pd.DataFrame:
    return next(d.value for d in at.dataframe if "justification" in d.value.columns)


def test_decide_is_read_only_until_an_approver_signs_then_shows_what_was_signed_and_weight_moves(home):
    at = open_page("decide")
    assert "Only an approver can sign decisions" in texts(at) and not at.checkbox
    sign_in(at, "alice", "wrong")
    assert "Unknown name or wrong password." in texts(at)
    sign_in(at, "alice", PASSWORD)
    assert "approver (password)" in texts(at)
    at.selectbox(key="wb_policy").set_value(str(home / "policies" / "lenient.toml")).run()
    assert at.metric[0].value == "PROMOTE" and at.metric[1].value == "1%"
    checks = at.table[0].value
    assert checks["Gate"].tolist() == ["evidence.labeled_rows", "errors.rate", "evidence.new_rows"]
    assert checks["Outcome"].str.startswith("✓ pass").all()
    assert at.success[0].value == "**Every one of the 3 checks passed.**"
    at.checkbox(key="wb_confirm").check()
    sign_button(at).click().run()  # a blank justification is refused
    assert not at.exception, [e.value for e in at.exception]
    assert "a justification is required" in at.error[0].value and "Signed decision" not in texts(at)
    at.text_area(key="wb_justification").input("error rate flat; lenient policy for the demo")
    at.checkbox(key="wb_confirm").check()
    sign_button(at).click().run()
    assert not at.exception, [e.value for e in at.exception]
    [ok] = at.success
    assert "PROMOTE, weight 0% → 1%" in ok.value and "MLflow run" in ok.value
    # signed: the page shows what alice signed, not the form again
    assert "Sign and apply" not in [b.label for b in at.button] and not at.text_area
    assert "You (alice) have signed this record" in texts(at)
    signed = signed_table(at)
    assert signed["who"].tolist() == ["alice"] and signed["as"].tolist() == ["signer"]
    assert signed["justification"].tolist() == ["error rate flat; lenient policy for the demo"]
    assert signed["when"].iloc[0].endswith("Z") and "**PROMOTE**" in texts(at)
    at.switch_page("pages/candidates.py").run()
    assert at.metric[0].value == "1%" and "chain verified" in texts(at)
    versions = at.dataframe[0].value.set_index("version")
    assert versions.loc["2", "canary verdict"] == "PROMOTE" and versions.loc["2", "canary weight"] == "1"
    at.switch_page("pages/audit.py").run()
    assert not at.exception
    # the demo's own decisions (one per month of its walk, signed with the workbench key) and alice's PROMOTE
    months = len(json.loads((home / "demo.json").read_text())["walk"])
    n = months + 1
    assert at.metric[0].value == str(n) and f"All {n} applied records of flight-delay verify" in texts(at)
    audit = at.dataframe[0].value
    assert audit["status"].tolist() == ["verified"] * n and audit["signer"].tolist()[0] == "alice"
    assert audit["MLflow run id"].iloc[0]


def test_decide_with_a_quorum_of_two_waits_for_a_second_approver(home):
    (home / "policies" / "two.toml").write_text(LENIENT.replace('"lenient"', '"two"') + "[approvals]\nquorum = 2\n")
    add_approver(approvers_path(home), "carol", password=PASSWORD)
    at = sign_in(open_page("decide"), "alice", PASSWORD)
    at.selectbox(key="wb_policy").set_value(str(home / "policies" / "two.toml")).run()
    at.text_area(key="wb_justification").input("looks fine")
    at.checkbox(key="wb_confirm").check()
    sign_button(at).click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert "; awaiting approval." in texts(at) and "awaits approval" in texts(at)
    assert "1 of 2 approvers signed" in texts(at) and "Approve" not in [b.label for b in at.button]
    at.switch_page("pages/candidates.py").run()
    assert at.metric[0].value == "0%" and "awaits approval: 1 of 2 approvers signed (alice)" in texts(at)

    at = sign_in(open_page("decide"), "carol", PASSWORD)
    assert "Sign and apply" not in [b.label for b in at.button]  # the open record takes approvals, not a new one
    sign_button(at, "Approve").click().run()
    assert "a justification is required" in at.error[0].value
    at.text_area(key="wb_approve_justification").input("checked the segments too")
    sign_button(at, "Approve").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert "You (carol) have signed this record" in texts(at) and "2 of 2 approvers signed" in texts(at)
    signed = signed_table(at)
    assert signed["who"].tolist() == ["alice", "carol"] and signed["as"].tolist() == ["signer", "approver"]
    at.switch_page("pages/candidates.py").run()
    assert at.metric[0].value == "1%" and "awaits approval" not in texts(at)


def test_decide_override_needs_a_reason_and_the_audit_shows_it(home):
    at = sign_in(open_page("decide"), "alice", PASSWORD)
    assert at.metric[0].value == "HOLD"  # the shipped policy holds the demo run
    at.text_area(key="wb_justification").input("the business wants the ramp started")
    at.selectbox(key="wb_override").set_value("PROMOTE")
    at.checkbox(key="wb_confirm").check()
    sign_button(at).click().run()
    assert "a reason for the override is required" in at.error[0].value
    at.text_area(key="wb_justification").input("the business wants the ramp started")
    at.selectbox(key="wb_override").set_value("PROMOTE")
    at.text_input(key="wb_override_reason").input("the held gates are the recent window, known seasonal")
    at.checkbox(key="wb_confirm").check()
    sign_button(at).click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert "PROMOTE, weight 0% → 1%" in texts(at) and "(override of HOLD)" in texts(at)
    at.switch_page("pages/audit.py").run()
    assert not at.exception, [e.value for e in at.exception]
    audit = at.dataframe[0].value
    assert audit["verdict"].iloc[0] == "PROMOTE (override of HOLD)" and audit["status"].iloc[0] == "verified"
    assert audit["justification"].iloc[0] == "the business wants the ramp started"
    assert "Override: the policy said HOLD, alice signed PROMOTE" in texts(at)


def test_decide_states_the_blocking_gate_then_lists_failing_and_open_checks_first(home):
    approvers_path(home).unlink()
    at = open_page("decide")
    assert at.metric[0].value == "HOLD"
    [summary] = at.warning
    checks = pd.concat([at.table[0].value, at.table[1].value])  # open checks, then the passing ones
    ranks = checks["Outcome"].str.replace(" (critical)", "").map({"✗ fail": 0, "? inconclusive": 1, "✓ pass": 2})
    assert ranks.notna().all() and ranks.is_monotonic_increasing and ranks.iloc[0] < 2
    blocking = checks["Gate"].iloc[0]
    assert summary.value.startswith(f"**Held: {blocking}") and "settle" in summary.value
    assert "labelled rows" in at.caption[1].value  # what the checks were judged on, under the summary
    assert not checks.isna().any().any() and "None" not in checks.to_string()
    rows = checks.set_index("Gate").loc["evidence.labeled_rows", "Rows judged"]
    assert "," in rows  # thousands separators
    assert "`workbench approver add NAME`" in texts(at) and "Sign in from the sidebar" not in texts(at)


def test_compare_says_better_only_where_the_interval_excludes_zero(home):
    from workbench.store import Store

    run_id = run_id_of(home)
    ev = make_evaluation(run_id, metrics={"roc_auc": (0.70, 0.72, 0.01, 0.03), "fpr": (0.10, 0.101, -0.01, 0.012)})
    ev["delta"]["fpr"]["p_value"] = 0.91
    with Store(home / "lake") as store:
        store.save_evaluation(run_id, {}, ev)
    at = open_page("compare")
    table = at.table[0].value
    assert table.loc["roc_auc", "difference"] == "candidate better"
    assert table.loc["fpr", "difference"] == "no significant difference" and table.loc["fpr", "p-value"] == "0.91"


def test_only_an_approver_resumes_a_killed_version_on_the_candidates_page(home):
    cli("canary", "kill", "flight-delay", "--reason", "pager", home=home)
    at = open_page()
    assert "**killed**" in texts(at) and "only an approver can resume it" in texts(at)
    sign_in(at, "alice", PASSWORD)
    at.text_input(key="wb_resume_reason_flight-delay").input("root cause fixed")
    next(b for b in at.button if b.label == "Resume (weight stays 0)").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert "**killed**" not in texts(at) and "chain verified" in texts(at) and at.metric[0].value == "0%"
    status = json.loads(cli("canary", "status", "flight-delay", "--json", home=home).stdout)
    assert status["verified"] and not status["killed"]
    audit = json.loads(cli("decision", "verify", status["decision_id"], "--json", home=home).stdout)
    assert audit["verified"] and audit["signer"] == "alice"


def test_oidc_login_decides_who_may_sign(viewed_home):
    auth = {
        "auth": {
            "redirect_uri": "http://127.0.0.1:8501/oauth2callback",
            "cookie_secret": "x" * 32,
            "client_id": "workbench",
            "client_secret": "s",
            "server_metadata_url": "https://idp.example.com/.well-known/openid-configuration",
        }
    }
    # an approver's verified e-mail signs; an unverified one or a reviewer's does not
    for email, verified, can_sign in (
        ("bob@example.com", True, True),
        ("bob@example.com", "false", False),
        ("eve@example.com", True, False),
    ):
        at = open_page("decide", secrets=auth, user={"is_logged_in": True, "email": email, "email_verified": verified})
        assert ("Sign and apply" in [b.label for b in at.button]) is can_sign, (email, verified)
        if not can_sign:
            assert f"{email} is signed in but is not an approver" in texts(at)
    at = open_page("decide", secrets=auth, user={"is_logged_in": False})
    assert "Log in" in [b.label for b in at.sidebar.button] and "Only an approver" in texts(at)


def test_a_viewer_cannot_start_a_replay(viewed_home):
    at = open_page("replay")
    assert "Starting a replay takes an operator or an approver" in texts(at)
    next(b for b in at.button if b.label == "Start replay").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.success and "viewers cannot start a replay: sign in as an operator or approver" in at.error[0].value
    assert read_progress(viewed_home) == []


def test_an_operator_starts_replays_but_cannot_sign(viewed_home):
    at = open_page("decide")
    sign_in(at, "olga", OPERATOR_PASSWORD)
    assert "operator (password)" in texts(at) and "olga is signed in but is not an approver" in texts(at)
    assert "Sign and apply" not in [b.label for b in at.button]


def test_replay_page_starts_a_job_and_lists_it(home):
    at = open_page("replay")
    sign_in(at, "olga", OPERATOR_PASSWORD)
    assert at.selectbox[0].value == "flight-delay"
    assert at.selectbox[1].value == "models:/flight-delay@champion"
    assert at.selectbox[2].value == "models:/flight-delay@challenger"
    assert at.selectbox[3].value == "flights"
    next(t for t in at.text_input if t.label == "Run id (optional)").input("app_run")
    next(c for c in at.checkbox if c.label.startswith("Drift report")).uncheck()
    next(b for b in at.button if b.label == "Start replay").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert "Started run **app_run**" in at.success[0].value
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        got = {p.run_id: p for p in read_progress(home)}.get("app_run")
        if got is not None and got.status != "running":
            break
        time.sleep(0.2)
    assert got.status == "finished", got.error
    import streamlit as st

    st.cache_data.clear()  # as if the runs list's 3-s cache had expired
    at.run()
    past = at.dataframe[0].value.set_index("run")
    assert past.loc["app_run", "status"] == "finished" and past.loc["app_run", "source"] == "app replay"
    assert past.loc["app_run", "rows"] == past.loc[run_id_of(home), "rows"]
    assert past.loc["app_run", "evidence"] == "compare?run=app_run"
    links = {(p.proto.page, p.proto.query_string) for p in at.page_link}
    assert {("compare", "run=app_run"), ("drift", "run=app_run"), ("decide", "run=app_run")} <= links
    at.switch_page("pages/compare.py").run()
    at.sidebar.selectbox(key="wb_run").set_value("app_run").run()
    assert not at.exception and at.table[0].value.index[0] == "accuracy"


def other_run(home: Path) -> str:
    """A finished run of the demo other than the one the pages pick by default (the newest)."""
    from workbench.store import Store

    with Store(home / "lake") as store:
        runs = [r["run_id"] for r in store.list_runs() if r["status"] == "finished"]
    assert len(runs) > 1
    return runs[-1]


@pytest.mark.parametrize("page", ["compare", "drift", "decide"])
def test_a_run_in_the_address_is_the_run_shown(viewed_home, page):
    run = other_run(viewed_home)
    at = open_page(page, address={"run": run})
    assert at.sidebar.selectbox(key="wb_run").value == run and f"Run **{run}**" in texts(at)
    assert ("compare", f"run={run}") in {(p.proto.page, p.proto.query_string) for p in at.page_link}


def test_candidates_link_each_run_to_compare_and_decide(viewed_home):
    at = open_page()
    links = {(p.proto.page, p.proto.query_string) for p in at.page_link}
    assert {("compare", f"run={run_id_of(viewed_home)}"), ("decide", f"run={run_id_of(viewed_home)}")} <= links
    assert ("audit", "model=flight-delay") in links and ("candidates", "model=flight-delay") in links
    at = open_page(address={"model": "flight-delay"})
    assert [s.value for s in at.subheader] == ["flight-delay"] and "All models" in [p.label for p in at.page_link]
    at = open_page(address={"model": "no-such-model"})
    assert at.subheader[0].value == "flight-delay"


def test_candidates_link_each_version_and_its_training_run_to_the_mlflow_ui(viewed_home, monkeypatch):
    at = open_page()
    assert "in MLflow" not in at.dataframe[0].value and "No MLflow UI address" in texts(at)
    monkeypatch.setenv("WORKBENCH_MLFLOW_UI", "http://127.0.0.1:5999/")
    at = open_page()
    versions = at.dataframe[0].value.set_index("version")
    ui = "http://127.0.0.1:5999/#/"
    assert versions.loc["2", "in MLflow"] == f"{ui}models/flight-delay/versions/2"
    assert versions["training run"].str.fullmatch(ui + r"experiments/\d+/runs/[0-9a-f]{32}").all()
    at.switch_page("pages/audit.py").run()
    assert at.dataframe[0].value["MLflow run"].dropna().str.startswith(ui + "experiments/").all()


def test_a_model_in_the_address_is_the_audited_model(viewed_home):
    at = open_page("audit", address={"model": "flight-delay"})
    assert at.selectbox(key="wb_model").value == "flight-delay" and at.query_params["model"] == "flight-delay"
    assert all(u.startswith("compare?run=") for u in at.dataframe[0].value["replay run"].dropna())


def test_another_process_writing_does_not_stop_the_pages(home):
    """A job in another process inside a write transaction: every page reads the last commit, no busy note."""
    import streamlit as st

    at = open_page("compare")
    before = at.table[0].value
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from workbench.store import Store\n"
            "s = Store(sys.argv[1])\n"
            "with s.transaction() as cur:\n"
            "    cur.execute(\"UPDATE runs SET status = 'running'\")\n"
            "    print('writing', flush=True)\n"
            "    time.sleep(120)\n",
            str(home / "lake"),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "writing"
        st.cache_data.clear()  # as if the cache had expired: every read goes to the storage
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        assert not [w for w in at.warning if w.value.startswith("Database busy")]
        assert at.table[0].value.equals(before)  # the uncommitted change is not seen
        at.switch_page("pages/audit.py").run()
        assert not at.exception, [e.value for e in at.exception]
    finally:
        proc.kill()
        proc.wait()
    st.cache_data.clear()
    at.switch_page("pages/compare.py").run()
    assert not at.warning


def test_live_page_shows_the_window_and_the_weight_history_but_no_actions_to_a_viewer(home):
    at = open_page("live", address={"model": "flight-delay"})
    assert at.title[0].value == "Live canary" and at.selectbox(key="wb_model").value == "flight-delay"
    assert "No traffic log under" in texts(at)
    assert "Only an approver can pause or abort" in texts(at) and not actions(at)
    write_live_log(home)
    at.segmented_control(key="wb_live_window").set_value("15 min").run()
    assert not at.exception, [e.value for e in at.exception]
    arms = at.dataframe[0].value.set_index("arm")
    assert arms.loc["baseline", "requests"] == 180 and arms.loc["candidate", "requests"] == 20
    assert arms.loc["candidate", "errors"] == 1 and arms.loc["candidate", "error rate"] == "5.00%"
    assert len(at.get("plotly_chart")) == 2
    history = json.loads(at.get("plotly_chart")[1].proto.spec)["data"][0]
    assert history["line"]["shape"] == "hv" and history["y"][-1] == 0
    assert "Only an approver can pause or abort" in texts(at) and not actions(at)


def actions(at: AppTest) -> list[str]:
    return [b.label for b in at.button if b.label in ("Pause", "Resume", "Abort")]


def test_an_approver_pauses_then_aborts_the_canary_on_the_live_page(home):
    lenient = str(home / "policies" / "lenient.toml")
    cli("decide", run_id_of(home), "--policy", lenient, "--justification", "errors flat", home=home)
    at = open_page("live", address={"model": "flight-delay"})
    assert at.metric[0].value == "1%"
    sign_in(at, "olga", OPERATOR_PASSWORD)
    assert "olga is signed in but is not an approver" in texts(at)
    at.sidebar.button(key="wb_signout").click().run()
    sign_in(at, "alice", PASSWORD)
    next(b for b in at.button if b.label == "Pause").click().run()
    assert "a reason is required" in texts(at) and at.metric[0].value == "1%"
    at.text_input(key="wb_live_pause_reason").input("waiting for the on-call")
    next(b for b in at.button if b.label == "Pause").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert "**paused**" in texts(at) and at.metric[0].value == "1%" and actions(at) == ["Resume", "Abort"]
    at.text_input(key="wb_live_abort_reason").input("error budget burnt")
    next(b for b in at.button if b.label == "Abort").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert "Abort: weight 0%" in texts(at) and "**killed**" in texts(at) and at.metric[0].value == "0%"
    status = json.loads(cli("canary", "status", "flight-delay", "--json", home=home).stdout)
    assert status["weight"] == 0 and status["killed"] and status["verified"] and not status["paused"]
    assert "killed" in cli("canary", "status", "flight-delay", home=home).stdout
    from workbench.store import Store

    with Store(home / "lake", read_only=True) as store:
        assert store.canary_state("flight-delay")["weight"] == 0
        kinds = [json.loads(r["record"])["kind"] for r in store.chain("flight-delay")[-2:]]
        head = json.loads(store.chain("flight-delay")[-1]["record"])
    assert kinds == ["pause", "kill"] and (head["signer"], head["justification"]) == ("alice", "error budget burnt")
    history = json.loads(at.get("plotly_chart")[-1].proto.spec)["data"]
    assert [d["name"] for d in history] == ["weight", "kill", "pause"] and history[0]["y"][-1] == 0
