"""The sign-off options of the command line: a required justification, overrides, `decision approve` (the
command's `main` in this process: tests/decide/test_canary.py runs it as a process for exit codes and stderr)."""

import json

from conftest import cli, free_port

QUORUM_TWO = """name = "two-person"
[approvals]
quorum = 2
"""


def test_decide_needs_a_justification_and_a_second_approver_moves_the_weight(seeded_home, tmp_path):
    down = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}", "WORKBENCH_SIGNER": "alice"}
    missing = json.loads(cli("decide", "run_a", "--no-apply", "--json", home=seeded_home, env=down).stdout)
    assert missing["record"]["justification"] == (
        "unreviewed: alice signed the policy's verdict on run run_a without a justification"
    )
    blank = cli("decide", "run_a", "--justification", " ", home=seeded_home, env=down, check=False)
    assert blank.returncode == 2 and "a justification is required" in blank.stderr
    lone = cli("decide", "run_a", "--justification", "ok", "--reason", "x", home=seeded_home, check=False)
    assert lone.returncode == 2 and "--override VERDICT and --reason TEXT go together" in lone.stderr

    policy = tmp_path / "two.toml"
    policy.write_text(QUORUM_TWO)
    args = ("decide", "run_a", "--policy", str(policy), "--justification", "AUC up", "--json")
    out = json.loads(cli(*args, home=seeded_home, env=down).stdout)
    assert out["awaiting_approval"] and not out["applied"] and out["record"]["justification"] == "AUC up"
    did = out["decision_id"]
    status = json.loads(cli("canary", "status", "fraud", "--json", home=seeded_home).stdout)
    assert status["weight"] == 0 and [a["decision_id"] for a in status["awaiting_approval"]] == [did]
    text = cli("canary", "status", "fraud", home=seeded_home).stdout
    assert f"decision {did} (PROMOTE to 1%) awaits approval: 1 of 2 signed (alice)" in text

    again = cli("decision", "approve", did, "--justification", "me", home=seeded_home, env=down, check=False)
    assert again.returncode == 2 and f"alice has already signed decision {did}" in again.stderr
    bob = down | {"WORKBENCH_SIGNER": "bob"}
    done = json.loads(
        cli("decision", "approve", did, "--justification", "segments fine", "--json", home=seeded_home, env=bob).stdout
    )
    assert done["applied"] and done["weight"] == 1 and done["signed_by"] == ["alice", "bob"]
    v = json.loads(cli("decision", "verify", did, "--json", home=seeded_home).stdout)
    assert v["verified"] and v["applied"] and v["signed_by"] == ["alice", "bob"]
    assert v["approvals"][0]["justification"] == "segments fine" and not v["awaiting_approval"]


def test_decide_overrides_the_policys_verdict_with_a_reason(seeded_home):
    down = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}
    args = ("decide", "run_a", "--justification", "wait for Monday", "--override", "hold", "--reason", "freeze")
    proc = cli(*args, home=seeded_home, env=down)
    assert "override: the policy said PROMOTE; freeze" in proc.stdout
    assert "verdict HOLD (override of PROMOTE by " in proc.stdout and "weight 0% -> 0%" in proc.stdout
    did = proc.stdout.split("decision ")[-1].split()[0]
    v = cli("decision", "verify", did, home=seeded_home).stdout
    assert f"decision {did} (fraud, HOLD, override of PROMOTE): signature valid" in v
