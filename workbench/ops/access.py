"""Who may do what in the app: roles, the approvers store with its password hashes, and a session's identity.

Three roles, each allowed what the one before it is: a **viewer** reads (anyone not signed in), an
**operator** also starts replays, jobs and drift recomputations, an **approver** also signs decisions
(promote, hold, roll back, kill, resume). The page actions call :func:`require_role` (and take a signer
from :func:`signer_for`), so a role is enforced by the library, not only by hidden buttons.

Operators and approvers live in ``$WORKBENCH_HOME/approvers.toml`` (mode 0600), written by
``workbench approver add``::

    [approvers.alice]
    email = "alice@example.com"                   # optional: matched against an OIDC login's e-mail
    password = "scrypt$16384$8$1$<salt>$<hash>"   # optional: for the local sign-in (base64, 16-byte salt)
    role = "approver"                             # or "operator"; an entry without a role is an approver

With OIDC configured for Streamlit (an ``[auth]`` section in ``.streamlit/secrets.toml``) the app signs
people in with ``st.login``; a login has the role of the entry with its e-mail, or the role its
:data:`ROLE_CLAIM` claim names (a role's name, or a list of names), whichever allows more. Without OIDC
an operator or approver signs in with name and password. Passwords are hashed with scrypt (N=2^14, r=8,
p=1) and a random salt, and compared in constant time; a password has at least
:data:`MIN_PASSWORD_LENGTH` characters.

An OIDC login matches an entry's e-mail only when the provider says the e-mail is verified: the
``email_verified`` claim is the boolean ``true``, or the string ``"true"`` in any case (some providers, such
as Amazon Cognito, send the claim as a string). A missing claim, ``false``, ``"false"`` or anything else
leaves the login without that entry's role: whoever controls an unverified address must not sign as its
owner.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import tomllib
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from workbench import WorkbenchError
from workbench.decide.signing import KeyRing, Signer
from workbench.store import check_name

APPROVERS_FILE = "approvers.toml"
ROLE_CLAIM = "workbench_role"


class Role(StrEnum):
    """What a person may do in the app; each role may do what the ones before it may."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    APPROVER = "approver"

    def allows(self, needed: Role) -> bool:
        order = list(Role)
        return order.index(self) >= order.index(needed)


STORED_ROLES = (Role.OPERATOR, Role.APPROVER)  # a viewer needs no entry


class AccessDenied(WorkbenchError):
    """An action the identity's role does not allow."""


def parse_role(value: object, where: str) -> Role:
    """A stored role (operator or approver); anything else is an error naming ``where`` and the valid ones."""
    if value not in STORED_ROLES:
        raise WorkbenchError(f"{where}: role must be one of {', '.join(STORED_ROLES)}, not {value!r}")
    return Role(str(value))


_N, _R, _P, _SALT, _LEN = 2**14, 8, 1, 16, 32
MIN_PASSWORD_LENGTH = 12


def approvers_path(home: Path) -> Path:
    return Path(home) / APPROVERS_FILE


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """``scrypt$N$r$p$<salt b64>$<hash b64>`` of ``password`` with a fresh random salt."""
    if not password:
        raise WorkbenchError("the password must not be empty")
    salt = salt if salt is not None else secrets.token_bytes(_SALT)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=_N, r=_R, p=_P, dklen=_LEN)
    return "$".join(
        ["scrypt", str(_N), str(_R), str(_P), base64.b64encode(salt).decode(), base64.b64encode(digest).decode()]
    )


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a hash made by :func:`hash_password` (False for a malformed hash)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        want = base64.b64decode(digest, validate=True)
        got = hashlib.scrypt(
            password.encode("utf-8"),
            salt=base64.b64decode(salt, validate=True),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(want),
            maxmem=2**26,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


@dataclass(frozen=True)
class Approver:
    name: str
    email: str | None = None
    password: str | None = None  # the hash
    role: Role = Role.APPROVER

    def to_dict(self) -> dict:
        """What ``approver list`` shows (never the hash)."""
        return {"name": self.name, "email": self.email, "password": self.password is not None, "role": self.role}


def load_approvers(path: Path) -> dict[str, Approver]:
    """Approvers by name; none when the file is missing. A malformed file is an error naming it."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise WorkbenchError(f"cannot read approvers file {path}: {e}") from None
    table = data.get("approvers", {})
    unknown = set(data) - {"approvers"}
    if unknown or not isinstance(table, dict):
        raise WorkbenchError(f"approvers file {path}: expected only [approvers.NAME] tables")
    out = {}
    for name, entry in table.items():
        if not isinstance(entry, dict) or set(entry) - {"email", "password", "role"}:
            raise WorkbenchError(f"approvers file {path}: [approvers.{name}] takes only email, password and role")
        role = parse_role(entry.get("role", Role.APPROVER), f"approvers file {path}: [approvers.{name}]")
        out[name] = Approver(name, entry.get("email"), entry.get("password"), role)
    return out


def save_approvers(path: Path, approvers: dict[str, Approver]) -> None:
    """Write the approvers file (mode 0600), replacing it atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# canary-workbench approvers: `workbench approver add NAME`. Passwords are scrypt hashes.", ""]
    for a in sorted(approvers.values(), key=lambda a: a.name):
        lines.append(f"[approvers.{json.dumps(a.name)}]")  # JSON string escapes are valid TOML basic strings
        if a.email:
            lines.append(f"email = {json.dumps(a.email)}")
        if a.password:
            lines.append(f"password = {json.dumps(a.password)}")
        lines.append(f"role = {json.dumps(a.role.value)}")
        lines.append("")
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    os.replace(tmp, path)


def check_password(password: str) -> str:
    """Refuse a password shorter than :data:`MIN_PASSWORD_LENGTH` characters."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise WorkbenchError(
            f"a password must be at least {MIN_PASSWORD_LENGTH} characters long (this one has {len(password)})"
        )
    return password


def email_verified(user: dict) -> bool:
    """Whether an OIDC login's ``email_verified`` claim says yes: ``true``, or ``"true"`` in any case."""
    claim = user.get("email_verified")
    return claim is True or (isinstance(claim, str) and claim.strip().lower() == "true")


def add_approver(
    path: Path, name: str, *, password: str | None = None, email: str | None = None, role: str = Role.APPROVER
) -> Approver:
    """Add or replace an approver (or an operator, by ``role``); at least one of a password (local sign-in)
    or an e-mail (OIDC)."""
    check_name(name, "approver name")
    checked = parse_role(role, f"approver {name}")
    if password is None and not email:
        raise WorkbenchError(f"an {checked} needs a password (local sign-in) or an --email (OIDC sign-in)")
    if password is not None:
        check_password(password)
    approvers = load_approvers(path)
    approver = Approver(name, email or None, hash_password(password) if password is not None else None, checked)
    approvers[name] = approver
    save_approvers(path, approvers)
    return approver


def remove_approver(path: Path, name: str) -> None:
    approvers = load_approvers(path)
    if name not in approvers:
        raise WorkbenchError(f"no approver named {name!r} (known: {', '.join(sorted(approvers)) or 'none'})")
    del approvers[name]
    save_approvers(path, approvers)


# -- the identity of an app session ----------------------------------------------------------------------
@dataclass(frozen=True)
class Identity:
    """Who is using the app: ``method`` is ``oidc`` or ``password``; the role says what they may do."""

    name: str
    method: str
    role: Role
    email: str | None = None

    @property
    def can_approve(self) -> bool:
        return self.role.allows(Role.APPROVER)

    @property
    def signer(self) -> str:
        """The name a signed record carries."""
        return self.email or self.name


def role_of(identity: Identity | None) -> Role:
    """The role of a session: a visitor who is not signed in is a viewer."""
    return Role.VIEWER if identity is None else identity.role


def require_role(identity: Identity | None, needed: Role, action: str) -> Identity:
    """The identity when its role allows ``action`` (e.g. "start a replay"), else :class:`AccessDenied`."""
    have = role_of(identity)
    if identity is None or not have.allows(needed):
        allowed = " or ".join(r.value for r in Role if r.allows(needed))
        raise AccessDenied(f"{have}s cannot {action}: sign in as an {allowed}")
    return identity


def signer_for(identity: Identity | None, keys: KeyRing, action: str) -> Signer:
    """The workbench key signing as ``identity``, for an approver only (signing is what approvers do)."""
    return keys.signer_as(require_role(identity, Role.APPROVER, action).signer)


def authenticate(approvers: dict[str, Approver], name: str, password: str) -> Identity | None:
    """The entry's identity when name and password match, else None (same cost either way)."""
    a = approvers.get(name)
    stored = a.password if a is not None and a.password else hash_password("x" * 12)
    ok = verify_password(password, stored)
    return Identity(name, "password", a.role, a.email) if ok and a is not None and a.password else None


def claimed_role(user: dict) -> Role:
    """The highest role an OIDC login's :data:`ROLE_CLAIM` claim names (a name or a list); else viewer."""
    claim = user.get(ROLE_CLAIM)
    names = claim if isinstance(claim, list) else [claim]
    roles = [Role(n.strip().lower()) for n in names if isinstance(n, str) and n.strip().lower() in set(Role)]
    return max(roles, key=list(Role).index, default=Role.VIEWER)


def oidc_identity(user: dict, approvers: dict[str, Approver]) -> Identity | None:
    """The identity of an OIDC login (Streamlit's ``st.user``): the role of the entry with its e-mail when the
    provider says that e-mail is verified, or the role its claim names, whichever allows more (see the
    module's docstring)."""
    if not user.get("is_logged_in"):
        return None
    email = user.get("email")
    name = user.get("name") or email or user.get("sub") or "unknown"
    by_email = {a.email.lower(): a for a in approvers.values() if a.email}
    entry = by_email.get(email.lower()) if isinstance(email, str) and email and email_verified(user) else None
    claimed = claimed_role(user)
    role = entry.role if entry is not None and entry.role.allows(claimed) else claimed
    return Identity(entry.name if entry else name, "oidc", role, email)


def oidc_provider(auth: dict) -> str | None:
    """The provider argument for ``st.login``: None for a single provider configured in ``[auth]`` itself,
    else the first named ``[auth.NAME]`` section."""
    if "client_id" in auth:
        return None
    named = [k for k, v in auth.items() if isinstance(v, dict)]
    return named[0] if named else None
