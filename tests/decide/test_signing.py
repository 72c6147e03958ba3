"""Keys, canonical JSON, Ed25519 signatures (checked by the real openssl) and refusals of bad records."""

import base64
import json
import shutil
import stat
import subprocess
from datetime import UTC, datetime, timedelta

import pytest

from conftest import fresh_run, run_cli, seed_run
from workbench import WorkbenchError
from workbench.config import Settings
from workbench.decide.canary import Signer, apply_decision, build_decision
from workbench.decide.chain import status, verify_chain
from workbench.decide.policy import load_policy
from workbench.decide.signing import (
    KeyRing,
    SignatureError,
    canonical_bytes,
    init_keys,
    key_fingerprint,
    load_private_key,
    record_hash,
    sign,
    trusted_keys,
    verify_signature,
)
from workbench.store import Store

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
def keys(tmp_path):
    init_keys(tmp_path / "keys")
    return tmp_path / "keys"


@pytest.fixture
def ctx(keys):
    store = Store()
    seed_run(store, "run_a")
    yield store, Signer.from_keys_dir(keys, "tester"), trusted_keys(keys, keys / "trusted")
    store.close()


def test_canonical_bytes_are_the_contracts():
    record = {"b": 1, "a": {"z": "é", "y": [1, 2.5, None]}, "ü": True}
    expected = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    assert canonical_bytes(record) == expected == '{"a":{"y":[1,2.5,null],"z":"é"},"b":1,"ü":true}'.encode()
    assert canonical_bytes(dict(reversed(list(record.items())))) == expected
    with pytest.raises(WorkbenchError, match="not canonical JSON"):
        canonical_bytes({"x": float("nan")})


def test_keys_init_writes_a_private_key_only_its_owner_reads(keys):
    priv, pub = keys / "ed25519.pem", keys / "ed25519.pub.pem"
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600 and stat.S_IMODE(keys.stat().st_mode) == 0o700
    assert pub.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert priv.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    before = priv.read_bytes()
    with pytest.raises(WorkbenchError, match="never overwritten"):
        init_keys(keys)
    assert priv.read_bytes() == before


def test_a_private_key_readable_by_others_is_refused(keys):
    (keys / "ed25519.pem").chmod(0o644)
    with pytest.raises(WorkbenchError, match="must be 0600"):
        load_private_key(keys)


def test_sign_and_verify(keys):
    key = load_private_key(keys)
    trusted = trusted_keys(keys, keys / "trusted")
    record = {"decision_id": "d1", "key_fingerprint": key_fingerprint(key.public_key()), "weight_after": 5}
    sig = sign(key, record)
    assert len(base64.b64decode(sig)) == 64
    assert verify_signature(record, sig, trusted) == record["key_fingerprint"]
    # the order of keys in the JSON does not matter: the bytes are canonical
    assert verify_signature(dict(reversed(list(record.items()))), sig, trusted)


@pytest.mark.parametrize(
    "change",
    [{"weight_after": 100}, {"verdict": "PROMOTE"}, {"previous_hash": "0" * 64}, {"extra": 1}],
    ids=["weight", "verdict", "previous-hash", "added-field"],
)
def test_tampered_records_are_refused(keys, change):
    key = load_private_key(keys)
    record = {
        "decision_id": "d1",
        "key_fingerprint": key_fingerprint(key.public_key()),
        "weight_after": 5,
        "verdict": "HOLD",
        "previous_hash": None,
    }
    sig = sign(key, record)
    with pytest.raises(SignatureError, match="does not match the record"):
        verify_signature(record | change, sig, trusted_keys(keys, keys / "trusted"))


def test_wrong_and_untrusted_keys_are_refused(keys, tmp_path):
    other = init_keys(tmp_path / "other")
    other_key = load_private_key(tmp_path / "other")
    trusted = trusted_keys(keys, keys / "trusted")
    # signed by a key nobody trusts
    rec = {"decision_id": "d1", "key_fingerprint": other.fingerprint}
    with pytest.raises(SignatureError, match="not trusted"):
        verify_signature(rec, sign(other_key, rec), trusted)
    # claims the trusted key's fingerprint but was signed by another key
    rec = {"decision_id": "d2", "key_fingerprint": key_fingerprint(load_private_key(keys).public_key())}
    with pytest.raises(SignatureError, match="does not match"):
        verify_signature(rec, sign(other_key, rec), trusted)
    # trusting the other key (keys/trusted/*.pem) makes its records verify
    (keys / "trusted").mkdir()
    shutil.copy(other.public_key_path, keys / "trusted" / "other.pem")
    rec = {"decision_id": "d3", "key_fingerprint": other.fingerprint}
    assert verify_signature(rec, sign(other_key, rec), trusted_keys(keys, keys / "trusted")) == other.fingerprint


@pytest.mark.parametrize(
    "signature, match",
    [(None, "unsigned"), ("", "unsigned"), ("%%%", "not valid base64")],
    ids=["none", "empty", "garbage"],
)
def test_unsigned_records_are_refused(keys, signature, match):
    rec = {"decision_id": "d1", "key_fingerprint": key_fingerprint(load_private_key(keys).public_key())}
    with pytest.raises(SignatureError, match=match):
        verify_signature(rec, signature, trusted_keys(keys, keys / "trusted"))


# -- the key ring -----------------------------------------------------------------------------------
def test_the_key_ring_holds_the_trusted_keys_read_once_and_the_signer(tmp_path):
    home = tmp_path / "home"
    own, extra, later = (init_keys(d) for d in (home / "keys", tmp_path / "extra", tmp_path / "later"))
    settings = Settings(
        home=home,
        mlflow_tracking_uri="unused",
        signer="ring@test",
        trusted_keys=(tmp_path / "extra" / "ed25519.pub.pem",),
    )
    ring = KeyRing.from_settings(settings)
    assert set(ring.trusted) == {own.fingerprint, extra.fingerprint}
    assert ring.trusted == trusted_keys(settings.keys_dir, settings.trusted_keys_dir, settings.trusted_keys)
    with pytest.raises(TypeError):
        ring.trusted["ed25519:forged"] = ring.trusted[own.fingerprint]  # read-only
    (home / "keys" / "trusted").mkdir()
    shutil.copy(later.public_key_path, home / "keys" / "trusted" / "later.pem")
    assert later.fingerprint not in ring.trusted  # read when the ring was made
    assert later.fingerprint in KeyRing.from_settings(settings).trusted  # a new ring (a restart) reads it
    signer = ring.signer
    assert (signer.name, signer.fingerprint) == ("ring@test", own.fingerprint) and ring.signer is signer
    approver = ring.signer_as("alice")
    assert (approver.name, approver.fingerprint) == ("alice", own.fingerprint)
    record = {"decision_id": "d1", "key_fingerprint": own.fingerprint}
    assert verify_signature(record, approver.sign(record).signature, ring.trusted) == own.fingerprint
    assert "PRIVATE" not in repr(ring) and own.fingerprint in repr(ring)


def test_the_key_ring_reads_the_private_key_only_to_sign(tmp_path):
    settings = Settings(home=tmp_path / "home", mlflow_tracking_uri="unused")
    empty = KeyRing.from_settings(settings)  # no key pair: nothing trusted, verifying still works
    assert dict(empty.trusted) == {}
    with pytest.raises(WorkbenchError, match="no signing key in .*workbench keys init"):
        _ = empty.signer
    with pytest.raises(WorkbenchError, match="no signing key in .*workbench keys init"):
        KeyRing.from_settings(settings, sign=True)
    init_keys(settings.keys_dir)
    (settings.keys_dir / "ed25519.pem").chmod(0o644)
    ring = KeyRing.from_settings(settings)  # verifying does not read the private key
    with pytest.raises(WorkbenchError, match="must be 0600"):
        _ = ring.signer
    with pytest.raises(WorkbenchError, match="must be 0600"):
        KeyRing.from_settings(settings, sign=True)
    with pytest.raises(WorkbenchError, match="only verifies"):
        _ = KeyRing(ring.trusted).signer


# -- refusals when a record would move the weight -----------------------------------------------------
def test_stale_record_is_refused_and_the_weight_stays(ctx):
    store, signer, trusted = ctx
    signed, _ = build_decision(store, "run_a", load_policy(), signer, now=T0, justification="reviewed")
    with pytest.raises(SignatureError, match="stale"):
        apply_decision(store, signed, trusted, now=T0 + timedelta(hours=24, seconds=1))
    assert status(store, "fraud", trusted).weight == 0 and store.chain_head("fraud") is None
    assert apply_decision(store, signed, trusted, now=T0 + timedelta(hours=23)).weight == 1


def test_future_dated_record_is_refused(ctx):
    store, signer, trusted = ctx
    signed, _ = build_decision(
        store, "run_a", load_policy(), signer, now=T0 + timedelta(hours=1), justification="reviewed"
    )
    with pytest.raises(SignatureError, match="future"):
        apply_decision(store, signed, trusted, now=T0)


def test_records_applied_out_of_order_are_refused(ctx):
    store, signer, trusted = ctx
    policy = load_policy()
    d1, _ = build_decision(store, "run_a", policy, signer, now=T0, justification="reviewed")
    apply_decision(store, d1, trusted, now=T0)
    newer = fresh_run(store, 1)  # new evidence: both later records PROMOTE
    d2, _ = build_decision(store, newer, policy, signer, now=T0, justification="reviewed")
    d3, _ = build_decision(store, newer, policy, signer, now=T0, justification="reviewed")  # also claims sequence 2
    assert d2.record["previous_hash"] == d3.record["previous_hash"] == record_hash(d1.record)
    apply_decision(store, d3, trusted, now=T0)
    with pytest.raises(SignatureError, match="out of chain"):
        apply_decision(store, d2, trusted, now=T0)
    with pytest.raises(SignatureError, match="already applied"):
        apply_decision(store, d1, trusted, now=T0)
    assert status(store, "fraud", trusted).weight == 5


def test_reordering_the_stored_chain_breaks_verification(ctx):
    store, signer, trusted = ctx
    for _ in range(2):
        d, _ = build_decision(store, "run_a", load_policy(), signer, now=T0, justification="reviewed")
        apply_decision(store, d, trusted, now=T0)
    assert verify_chain(store, "fraud", trusted) == 2 and status(store, "fraud", trusted).verified
    store.cursor().execute("UPDATE canary_chain SET sequence = 3 - sequence WHERE model = 'fraud'")
    with pytest.raises(SignatureError, match="does not link|altered"):
        verify_chain(store, "fraud", trusted)
    st = status(store, "fraud", trusted)
    assert not st.verified and st.problem


def test_a_signed_record_must_still_follow_the_ramp(ctx):
    store, signer, trusted = ctx
    signed, _ = build_decision(store, "run_a", load_policy(), signer, now=T0, justification="reviewed")
    forged = signer.sign(signed.record | {"weight_after": 100, "decision_id": "dec_forged"})
    with pytest.raises(SignatureError, match="must give 1%"):
        apply_decision(store, forged, trusted, now=T0)
    assert status(store, "fraud", trusted).weight == 0


# -- the real openssl --------------------------------------------------------------------------------
def test_openssl_verifies_the_cli_signature(seeded_home, tmp_path):
    out = json.loads(
        run_cli("decide", "run_a", "--justification", "reviewed", "--no-apply", "--json", home=seeded_home).stdout
    )
    (tmp_path / "pub.pem").write_text(run_cli("keys", "export", home=seeded_home).stdout)
    (tmp_path / "record.bin").write_bytes(
        json.dumps(out["record"], sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    )
    (tmp_path / "sig.bin").write_bytes(base64.b64decode(out["signature"]))
    cmd = [
        "openssl",
        "pkeyutl",
        "-verify",
        "-pubin",
        "-inkey",
        "pub.pem",
        "-rawin",
        "-in",
        "record.bin",
        "-sigfile",
        "sig.bin",
    ]
    ok = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert ok.returncode == 0 and "Signature Verified Successfully" in ok.stdout
    tampered = out["record"] | {"weight_after": 100}
    (tmp_path / "record.bin").write_bytes(
        json.dumps(tampered, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    )
    bad = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode != 0 and "Signature Verification Failure" in bad.stdout


def test_keys_cli(tmp_path):
    home = tmp_path / "home"
    made = json.loads(run_cli("keys", "init", "--json", home=home).stdout)
    assert stat.S_IMODE((home / "keys" / "ed25519.pem").stat().st_mode) == 0o600
    exported = json.loads(run_cli("keys", "export", "--json", home=home).stdout)
    assert exported["fingerprint"] == made["fingerprint"]
    assert exported["public_key_pem"].startswith("-----BEGIN PUBLIC KEY-----")
    again = run_cli("keys", "init", home=home, check=False)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "never overwritten" in again.stderr
    assert "PRIVATE KEY" not in made["private_key_path"] + json.dumps(exported)
