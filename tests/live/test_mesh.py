"""Mesh and delivery-tool manifests from the live canary state, and the Flagger webhook semantics."""

import json

import pytest
import yaml

from conftest import fresh_run, run_cli
from workbench import WorkbenchError
from workbench.decide.canary import Signer, apply_decision, build_decision, build_kill
from workbench.decide.chain import live_view
from workbench.decide.policy import load_policy
from workbench.decide.signing import trusted_keys
from workbench.live.mesh import FLAGGER_HOOKS, MeshOptions, flagger_gate, render, to_yaml
from workbench.store import Store

RAMP = [1, 5, 25, 50, 100]
OPTS = MeshOptions(namespace="ml", api_url="http://wb.ml.svc:8000")


def view(weight=25, verdict="promote", verified=True, killed=False):
    return {
        "model": "fraud",
        "weight": weight,
        "baseline_version": "1",
        "candidate_version": "2",
        "decision_id": "dec_x",
        "signature": "c2ln",
        "verified": verified,
        "verdict": verdict,
        "killed": killed,
        "sequence": 3,
        "ramp": RAMP,
        "problem": None if verified else "tampered",
    }


def parsed(target, v=None):
    return list(yaml.safe_load_all(to_yaml(render(target, v or view(), RAMP, OPTS))))


def test_istio_virtual_service_weights():
    vs, dr = parsed("istio")
    assert (vs["kind"], dr["kind"]) == ("VirtualService", "DestinationRule")
    route = vs["spec"]["http"][0]["route"]
    assert [(r["destination"]["subset"], r["weight"]) for r in route] == [("baseline", 75), ("candidate", 25)]
    assert {s["name"]: s["labels"]["version"] for s in dr["spec"]["subsets"]} == {"baseline": "1", "candidate": "2"}
    assert vs["metadata"]["namespace"] == "ml" and vs["metadata"]["annotations"]["canary-workbench.io/weight"] == "25"


def test_argo_rollout_steps_and_analysis():
    rollout, template = parsed("argo")
    steps = rollout["spec"]["strategy"]["canary"]["steps"]
    assert [s["setWeight"] for s in steps if "setWeight" in s] == [1, 5, 25, 50]
    assert all("analysis" in s for s in steps[1::2])
    metric = template["spec"]["metrics"][0]
    assert metric["successCondition"] == 'result.verdict == "promote"'
    assert metric["provider"]["web"]["url"] == "http://wb.ml.svc:8000/v1/canary/fraud"
    assert steps[1]["analysis"]["templates"][0]["templateName"] == template["metadata"]["name"]


def test_flagger_canary_webhooks():
    [canary] = parsed("flagger")
    analysis = canary["spec"]["analysis"]
    assert analysis["stepWeights"] == [1, 5, 25, 50]
    assert {h["type"]: h["url"] for h in analysis["webhooks"]} == {
        h: f"http://wb.ml.svc:8000/v1/flagger/fraud/{h}" for h in FLAGGER_HOOKS
    }


@pytest.mark.parametrize("weight", [0, 5, 100], ids=["rolled-back", "step", "full"])
def test_kserve_canary_traffic_percent(weight):
    [isvc] = parsed("kserve", view(weight=weight))
    assert isvc["kind"] == "InferenceService" and isvc["spec"]["predictor"]["canaryTrafficPercent"] == weight


def test_unverified_or_unknown_state_is_not_rendered():
    with pytest.raises(WorkbenchError, match="does not verify"):
        render("istio", view(verified=False), RAMP, OPTS)
    with pytest.raises(WorkbenchError, match="unknown target"):
        render("linkerd", view(), RAMP, OPTS)
    with pytest.raises(WorkbenchError, match="no canary decision"):
        render("istio", view() | {"decision_id": None}, RAMP, OPTS)


@pytest.mark.parametrize(
    "v, expected",
    [
        (view(5, "promote"), {"confirm-traffic-increase": True, "confirm-promotion": False, "rollback": False}),
        (view(100, "promote"), {"confirm-traffic-increase": True, "confirm-promotion": True, "rollback": False}),
        (view(25, "hold"), {"confirm-traffic-increase": False, "confirm-promotion": False, "rollback": False}),
        (view(0, "rollback"), {"confirm-traffic-increase": False, "confirm-promotion": False, "rollback": True}),
        (
            view(0, "promote", killed=True),
            {"confirm-traffic-increase": False, "confirm-promotion": False, "rollback": True},
        ),
        (
            view(100, "unverified", verified=False),
            {"confirm-traffic-increase": False, "confirm-promotion": False, "rollback": True},
        ),
    ],
    ids=["ramping", "at-100", "hold", "rollback", "killed-then-promote", "unverified"],
)
def test_flagger_gates(v, expected):
    assert {h: flagger_gate(v, h)[0] for h in FLAGGER_HOOKS} == expected


def test_render_from_the_store_and_the_cli(seeded_home):
    signer = Signer.from_keys_dir(seeded_home / "keys", "tester")
    trusted = trusted_keys(seeded_home / "keys", seeded_home / "none")
    with Store(seeded_home / "lake") as store:
        for step in range(2):  # each step on new evidence
            signed, _ = build_decision(
                store, "run_a" if step == 0 else fresh_run(store, step), load_policy(), signer, justification="reviewed"
            )
            apply_decision(store, signed, trusted)
        v = live_view(store, "fraud", trusted)
        assert (v["weight"], v["verdict"], v["ramp"], v["signature"]) == (5, "promote", RAMP, signed.signature)
    out = run_cli("canary", "render", "fraud", "--target", "istio", "--namespace", "ml", home=seeded_home).stdout
    vs, _ = yaml.safe_load_all(out)
    assert [r["weight"] for r in vs["spec"]["http"][0]["route"]] == [95, 5]
    with Store(seeded_home / "lake") as store:
        apply_decision(store, build_kill(store, "fraud", "pager", signer, load_policy()), trusted)
    d = json.loads(run_cli("canary", "render", "fraud", "--target", "kserve", "--json", home=seeded_home).stdout)
    assert d["weight"] == 0 and d["objects"][0]["spec"]["predictor"]["canaryTrafficPercent"] == 0
    assert yaml.safe_load(d["yaml"]) == d["objects"][0]
    with Store(seeded_home / "lake") as store:
        store.cursor().execute("UPDATE canary_state SET weight = 50")
    bad = run_cli("canary", "render", "fraud", "--target", "argo", home=seeded_home, check=False)
    assert bad.returncode == 2 and "does not verify" in bad.stderr and bad.stdout == ""
