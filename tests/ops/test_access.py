"""Roles and approvers: scrypt password hashes, the approvers file, identities and what their roles allow, and
`workbench approver`."""

import base64
import hashlib
import json
import os
import subprocess
import sys
import tomllib

import pytest

from conftest import REPO
from workbench import WorkbenchError
from workbench.decide.signing import KeyRing, init_keys
from workbench.ops.access import (
    AccessDenied,
    Identity,
    Role,
    add_approver,
    approvers_path,
    authenticate,
    hash_password,
    load_approvers,
    oidc_identity,
    oidc_provider,
    remove_approver,
    require_role,
    signer_for,
    verify_password,
)


def test_hash_is_scrypt_with_a_random_salt():
    h = hash_password("correct horse")
    scheme, n, r, p, salt, digest = h.split("$")
    assert (scheme, n, r, p) == ("scrypt", "16384", "8", "1")
    want = hashlib.scrypt(b"correct horse", salt=base64.b64decode(salt), n=16384, r=8, p=1, dklen=32)
    assert base64.b64decode(digest) == want and len(base64.b64decode(salt)) == 16
    assert hash_password("correct horse") != h  # a new salt every time
    assert verify_password("correct horse", h) and not verify_password("correct horsE", h)


@pytest.mark.parametrize(
    "stored",
    ["", "plain", "pbkdf2$1$2$3$AA==$AA==", "scrypt$16384$8$1$!!$AA==", "scrypt$x$8$1$AA==$AA=="],
    ids=["empty", "no-fields", "other-scheme", "bad-base64", "bad-number"],
)
def test_malformed_hashes_never_verify(stored):
    assert verify_password("anything", stored) is False


def test_approvers_file_roundtrip_mode_and_errors(tmp_path):
    path = approvers_path(tmp_path)
    add_approver(path, "alice", password="pw-a-long-enough", email="alice@example.com")
    add_approver(path, "bob", email="bob@example.com")
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert "pw-a" not in path.read_text()
    data = tomllib.loads(path.read_text())
    assert set(data["approvers"]) == {"alice", "bob"}
    approvers = load_approvers(path)
    assert approvers["bob"].password is None and approvers["alice"].email == "alice@example.com"
    assert approvers["alice"].to_dict() == {
        "name": "alice",
        "email": "alice@example.com",
        "password": True,
        "role": "approver",
    }
    with pytest.raises(WorkbenchError, match="needs a password"):
        add_approver(path, "carol")
    with pytest.raises(WorkbenchError, match="invalid approver name"):
        add_approver(path, "no spaces", password="x")
    remove_approver(path, "bob")
    assert set(load_approvers(path)) == {"alice"}
    with pytest.raises(WorkbenchError, match="no approver named 'bob'"):
        remove_approver(path, "bob")
    path.write_text("[approvers.x]\nrole = 'admin'\n")
    with pytest.raises(WorkbenchError, match=r"role must be one of operator, approver, not 'admin'"):
        load_approvers(path)
    path.write_text("[approvers.x]\nrole = 'viewer'\n")
    with pytest.raises(WorkbenchError, match="role must be one of"):
        load_approvers(path)
    path.write_text("[approvers.x]\nadmin = true\n")
    with pytest.raises(WorkbenchError, match="takes only email, password and role"):
        load_approvers(path)
    with pytest.raises(WorkbenchError, match="role must be one of"):
        add_approver(path, "y", password=PW_A, role="admin")
    assert load_approvers(tmp_path / "missing.toml") == {}


PW_A = "pw-a-long-enough"


def test_authenticate_and_oidc_identities(tmp_path):
    path = approvers_path(tmp_path)
    add_approver(path, "alice", password=PW_A, email="Alice@Example.com")
    add_approver(path, "bob", email="bob@example.com")
    approvers = load_approvers(path)
    who = authenticate(approvers, "alice", PW_A)
    assert who.can_approve and who.method == "password" and who.signer == "Alice@Example.com"
    assert authenticate(approvers, "alice", "wrong") is None
    assert authenticate(approvers, "mallory", PW_A) is None
    assert authenticate(approvers, "bob", "") is None  # an OIDC-only approver has no password
    who = oidc_identity(
        {"is_logged_in": True, "email": "alice@example.com", "name": "Alice", "email_verified": True}, approvers
    )
    assert who.can_approve and who.name == "alice" and who.method == "oidc"
    who = oidc_identity({"is_logged_in": True, "email": "eve@example.com"}, approvers)
    assert not who.can_approve and who.name == "eve@example.com"
    assert not oidc_identity(
        {"is_logged_in": True, "email": "bob@example.com", "email_verified": False}, approvers
    ).can_approve
    assert oidc_identity({"is_logged_in": False}, approvers) is None
    assert oidc_provider({"client_id": "x"}) is None and oidc_provider({"redirect_uri": "u", "okta": {}}) == "okta"


def test_cli_approver_add_list_remove(tmp_path):
    env = os.environ | {"WORKBENCH_HOME": str(tmp_path)}

    def cli(*args, stdin=None):
        return subprocess.run(
            [sys.executable, "-m", "workbench.cli", "approver", *args],
            cwd=REPO,
            env=env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )

    out = cli("add", "alice", "--password-stdin", "--json", stdin="s3cret-and-long\n")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {
        "name": "alice",
        "email": None,
        "password": True,
        "role": "approver",
        "file": str(tmp_path / "approvers.toml"),
    }
    assert verify_password("s3cret-and-long", load_approvers(approvers_path(tmp_path))["alice"].password)
    assert cli("add", "oidc_bob", "--email", "bob@example.com", "--no-password").returncode == 0
    out = cli("add", "olga", "--role", "operator", "--password-stdin", "--json", stdin="olga-pw-long-enough\n")
    assert out.returncode == 0 and json.loads(out.stdout)["role"] == "operator", out.stderr
    listed = json.loads(cli("list", "--json").stdout)["approvers"]
    assert [(a["name"], a["role"]) for a in listed] == [
        ("alice", "approver"),
        ("oidc_bob", "approver"),
        ("olga", "operator"),
    ]
    assert "s3cret-and-long" not in json.dumps(listed)
    assert "invalid choice: 'viewer'" in cli("add", "v", "--role", "viewer", "--no-password", "--email", "v@x").stderr
    bad = cli("add", "carol", stdin="")  # no terminal, no --password-stdin
    assert bad.returncode == 2 and "--password-stdin" in bad.stderr
    assert cli("remove", "alice").returncode == 0
    assert [a["name"] for a in json.loads(cli("list", "--json").stdout)["approvers"]] == ["oidc_bob", "olga"]


@pytest.mark.parametrize(
    "claim, can_approve",
    [
        (True, True),
        ("true", True),
        ("TRUE", True),
        (None, False),
        (False, False),
        ("false", False),
        ("False", False),
        ("", False),
        ("yes", False),
        (1, False),
        ([True], False),
    ],
    ids=[
        "bool-true",
        "string-true",
        "string-TRUE",
        "missing",
        "bool-false",
        "string-false",
        "string-False",
        "empty",
        "yes",
        "one",
        "list",
    ],
)
def test_only_a_verified_email_grants_approver(tmp_path, claim, can_approve):
    path = approvers_path(tmp_path)
    add_approver(path, "bob", email="bob@example.com")
    user = {"is_logged_in": True, "email": "bob@example.com"}
    if claim is not None:
        user["email_verified"] = claim
    who = oidc_identity(user, load_approvers(path))
    assert who.can_approve is can_approve and who.method == "oidc"
    assert (who.name == "bob") is can_approve  # an unverified login keeps its own name, never the approver's


@pytest.mark.parametrize("password", ["x", "short-pw", "eleven-char"], ids=["1-char", "8-chars", "11-chars"])
def test_short_approver_passwords_are_refused(tmp_path, password):
    path = approvers_path(tmp_path)
    with pytest.raises(WorkbenchError, match=r"at least 12 characters long \(this one has \d+\)"):
        add_approver(path, "alice", password=password)
    assert load_approvers(path) == {}
    assert add_approver(path, "alice", password="twelve-chars").password


def test_cli_refuses_a_short_password(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "workbench.cli", "approver", "add", "alice", "--password-stdin"],
        cwd=REPO,
        env=os.environ | {"WORKBENCH_HOME": str(tmp_path)},
        input="a\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and proc.stdout == "" and proc.stderr.count("\n") == 1
    assert "at least 12 characters" in proc.stderr and not (tmp_path / "approvers.toml").exists()


def test_entries_without_a_role_are_approvers(tmp_path):
    path = approvers_path(tmp_path)
    add_approver(path, "alice", password=PW_A)
    path.write_text(path.read_text().replace('role = "approver"\n', ""))  # a file written before roles
    assert "role" not in path.read_text() and load_approvers(path)["alice"].role == Role.APPROVER
    assert authenticate(load_approvers(path), "alice", PW_A).can_approve


def test_operators_sign_in_but_cannot_approve(tmp_path):
    path = approvers_path(tmp_path)
    add_approver(path, "olga", password=PW_A, email="olga@example.com", role="operator")
    approvers = load_approvers(path)
    who = authenticate(approvers, "olga", PW_A)
    assert who.role == Role.OPERATOR and not who.can_approve
    user = {"is_logged_in": True, "email": "olga@example.com", "email_verified": True}
    assert oidc_identity(user, approvers).role == Role.OPERATOR
    assert 'role = "operator"' in path.read_text()


@pytest.mark.parametrize(
    "claim, verified, role",
    [
        (None, True, Role.OPERATOR),  # the store's entry
        ("approver", True, Role.APPROVER),  # the claim allows more
        ("viewer", True, Role.OPERATOR),  # the claim allows less: the entry counts
        ("Approver", False, Role.APPROVER),  # the claim does not rest on the e-mail
        (None, False, Role.VIEWER),  # an unverified e-mail never takes the entry's role
        (["viewer", "operator"], False, Role.OPERATOR),
        ("admin", False, Role.VIEWER),
        (7, False, Role.VIEWER),
    ],
    ids=["entry", "claim-higher", "claim-lower", "claim-unverified", "unverified", "list", "unknown", "number"],
)
def test_oidc_role_claims(tmp_path, claim, verified, role):
    path = approvers_path(tmp_path)
    add_approver(path, "olga", email="olga@example.com", role="operator")
    user = {"is_logged_in": True, "email": "olga@example.com", "email_verified": verified}
    if claim is not None:
        user["workbench_role"] = claim
    assert oidc_identity(user, load_approvers(path)).role == role


VIEWER = Identity("eve", "oidc", Role.VIEWER)
OPERATOR = Identity("olga", "password", Role.OPERATOR)
APPROVER = Identity("alice", "password", Role.APPROVER, "alice@example.com")


@pytest.mark.parametrize(
    "who, needed, refused",
    [
        (None, Role.OPERATOR, "viewers cannot act: sign in as an operator or approver"),
        (VIEWER, Role.OPERATOR, "viewers cannot act: sign in as an operator or approver"),
        (OPERATOR, Role.OPERATOR, None),
        (APPROVER, Role.OPERATOR, None),
        (None, Role.APPROVER, "viewers cannot act: sign in as an approver"),
        (OPERATOR, Role.APPROVER, "operators cannot act: sign in as an approver"),
        (APPROVER, Role.APPROVER, None),
    ],
    ids=["visitor-op", "viewer-op", "operator-op", "approver-op", "visitor-sign", "operator-sign", "approver-sign"],
)
def test_require_role(who, needed, refused):
    if refused is None:
        assert require_role(who, needed, "act") is who
    else:
        with pytest.raises(AccessDenied, match=refused):
            require_role(who, needed, "act")


def test_only_approvers_get_a_signer(tmp_path):
    from workbench.config import load_settings

    settings = load_settings(tmp_path)
    init_keys(settings.keys_dir)
    keys = KeyRing.from_settings(settings)
    assert signer_for(APPROVER, keys, "sign a decision").name == "alice@example.com"
    for who in (None, VIEWER, OPERATOR):
        with pytest.raises(AccessDenied, match="cannot sign a decision: sign in as an approver"):
            signer_for(who, keys, "sign a decision")
