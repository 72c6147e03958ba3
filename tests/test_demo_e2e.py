"""End to end on a small real slice: the CLI contract from traffic to metrics, against sklearn."""

import json

import numpy as np
import pytest
from sklearn import metrics as skm

from conftest import DEMO_LIMIT, run_cli


def test_demo_summary(demo_home):
    d = json.loads((demo_home / "demo.json").read_text())
    assert d["ingest"]["rows_read"] == d["ingest"]["rows"] + d["ingest"]["quarantined"]
    assert d["replay"]["rows"] == d["ingest"]["rows"] and d["replay"]["status"] == "finished"
    assert d["models"]["baseline"]["version"] != d["models"]["candidate"]["version"]
    assert 0 < d["evaluation"]["labeled_rows"] <= d["replay"]["rows"]
    assert d["data"]["traffic"] + d["data"]["train"] <= DEMO_LIMIT


def test_cli_evaluate_matches_sklearn(demo_home):
    run_id = json.loads((demo_home / "demo.json").read_text())["replay"]["run_id"]
    out = json.loads(run_cli("evaluate", run_id, "--json", home=demo_home).stdout)
    assert set(out) >= {"run_id", "labeled_rows", "baseline", "candidate", "delta", "latency", "errors"}
    from workbench.store import Store

    store = Store(demo_home / "lake", read_only=True)
    con = store.cursor()
    for role in ("baseline", "candidate"):
        y, s = map(
            np.array,
            zip(
                *con.execute(
                    f"SELECT l.label, p.{role}_score FROM predictions p JOIN traffic_flights t USING (_row) "
                    "JOIN labels l USING (request_id) "
                    f"WHERE p.run_id = ? AND p.{role}_error IS NULL",
                    [run_id],
                ).fetchall(),
                strict=True,
            ),
        )
        t = out["thresholds"][role]
        assert out[role]["roc_auc"]["value"] == pytest.approx(skm.roc_auc_score(y, s), abs=1e-9)
        assert out[role]["f1"]["value"] == pytest.approx(skm.f1_score(y, s >= t), abs=1e-9)
        assert out[role]["log_loss"]["value"] == pytest.approx(skm.log_loss(y, s), abs=1e-9)
        assert out[role]["pr_auc"]["value"] == pytest.approx(skm.average_precision_score(y, s), abs=1e-9)
        for m in ("f1", "roc_auc", "log_loss"):
            assert out[role][m]["ci_low"] <= out[role][m]["value"] <= out[role][m]["ci_high"]
    assert set(out["delta"]["roc_auc"]) == {"value", "ci_low", "ci_high", "p_value", "mde"}
    assert set(out["latency"]) == {"baseline", "candidate", "delta", "mann_whitney_p"}
    store.close()


def test_cli_json_is_one_object_and_rerun_is_noop(demo_home):
    d = json.loads((demo_home / "demo.json").read_text())
    proc = run_cli(
        "replay",
        "--baseline",
        "models:/flight-delay@champion",
        "--candidate",
        "models:/flight-delay@challenger",
        "--traffic",
        "flights",
        "--run-id",
        d["replay"]["run_id"],
        "--json",
        home=demo_home,
    )
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert out["status"] == "already_complete" and out["rows"] == d["replay"]["rows"]


def test_cli_errors_are_one_line(demo_home, tmp_path):
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"PAR1 not really")
    proc = run_cli("ingest", str(bad), "--name", "broken", "--json", home=demo_home, check=False)
    assert proc.returncode != 0 and proc.stdout == ""
    assert proc.stderr.strip().startswith("error: cannot read") and "Traceback" not in proc.stderr
    proc = run_cli("evaluate", "no_such_run", home=demo_home, check=False)
    assert proc.returncode == 2 and "unknown run" in proc.stderr


def test_registry_uris_resolve_to_versions(workbench_env):
    from workbench.replay.models import describe

    champ = describe("models:/flight-delay@champion")
    assert champ.flavor == "sklearn" and champ.version == "1" and 0 < champ.threshold < 1
    chall = describe("models:/flight-delay/2")
    assert chall.flavor == "pytorch" and "temp" in chall.features


def test_demo_regression_pair_is_replayed_evaluated_and_decided(demo_home):
    d = json.loads((demo_home / "demo.json").read_text())["regression"]
    run_id = d["run_id"]
    assert d["model"] == "flight-delay-minutes" and d["labeled_rows"] > 0
    assert d["decision"]["verdict"] in ("PROMOTE", "HOLD", "ROLLBACK")
    out = json.loads(run_cli("evaluate", run_id, "--json", home=demo_home).stdout)
    assert out["task"] == "regression" and out["labeled_rows"] > 0
    for role in ("baseline", "candidate"):
        m = out[role]
        assert m["mae"]["ci_low"] <= m["mae"]["value"] <= m["mae"]["ci_high"]
        assert m["rmse"]["value"] ** 2 == pytest.approx(m["mse"]["value"], rel=1e-9)
    assert {"value", "ci_low", "ci_high", "p_value", "mde"} <= set(out["delta"]["mae"])
    text = run_cli("evaluate", run_id, home=demo_home).stdout
    assert "(regression)" in text and "mae" in text and "roc_auc" not in text
    runs = json.loads(run_cli("runs", "--json", home=demo_home).stdout)["runs"]
    assert any(r["run_id"] == run_id and r["status"] == "finished" for r in runs)
    assert out["labeled_rows"] == d["labeled_rows"]
    assert set(d["drift"]) >= {"dataset_drift", "baseline", "candidate"}  # the demo checks its drift too
    drift = json.loads(run_cli("drift", run_id, "--json", home=demo_home).stdout)
    for role in ("baseline", "candidate"):
        assert drift["residual_drift"][role]["available"] and drift["residual_drift"][role]["current_rows"] > 0
    assert "absolute error" in drift["concept_drift"]["stream"] and drift["calibration_drift"]["available"] is False
    assert "residual drift (baseline)" in run_cli("drift", run_id, home=demo_home).stdout


def test_demo_multiclass_pair_is_replayed_evaluated_and_decided(demo_home):
    d = json.loads((demo_home / "demo.json").read_text())["multiclass"]
    run_id = d["run_id"]
    assert d["model"] == "flight-delay-band" and d["labeled_rows"] > 0
    assert d["decision"]["verdict"] in ("PROMOTE", "HOLD", "ROLLBACK")
    out = json.loads(run_cli("evaluate", run_id, "--json", home=demo_home).stdout)
    assert out["task"] == "multiclass" and out["classes"] == ["late_15_60", "late_over_60", "on_time"]
    from workbench.store import Store

    store = Store(demo_home / "lake", read_only=True)
    rows = (
        store.cursor()
        .execute(
            "SELECT l.label, p.candidate_class, pp.candidate_proba FROM predictions p "
            "JOIN traffic_flights t USING (_row) JOIN label_classes l ON l.traffic = 'flights' AND l.request_id = "
            "t.request_id JOIN prediction_probabilities pp ON pp.run_id = p.run_id AND pp._row = p._row "
            "WHERE p.run_id = ? AND p.candidate_error IS NULL",
            [run_id],
        )
        .fetchall()
    )
    store.close()
    y = np.array([out["classes"].index(r[0]) for r in rows])
    pred, proba = np.array([r[1] for r in rows]), np.array([r[2] for r in rows])
    c = out["candidate"]
    assert c["accuracy"]["value"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-9)
    assert c["macro_f1"]["value"] == pytest.approx(skm.f1_score(y, pred, average="macro"), abs=1e-9)
    assert c["log_loss"]["value"] == pytest.approx(skm.log_loss(y, proba, labels=[0, 1, 2]), abs=1e-9)
    assert out["confusion"]["candidate"] == skm.confusion_matrix(y, pred, labels=[0, 1, 2]).tolist()
    assert out["labeled_rows"] == d["labeled_rows"]
    text = run_cli("evaluate", run_id, home=demo_home).stdout
    assert "(multiclass)" in text and "macro_f1" in text and "confusion" in text
