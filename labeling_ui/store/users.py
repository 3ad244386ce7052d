"""Users, password hashing (scrypt) and API sessions."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from alignment.errors import AlignError
from labeling_ui.store.engine import Store, audit
from labeling_ui.store.schema import (
    ROLES,
    ApiSession,
    User,
    now,
)
from labeling_ui.store.throttle import current_lock, record_failure, record_success, throttle_keys

SESSION_KEPT = timedelta(days=7)  # expired tokens are remembered this long (to say "expired"), then purged


class SessionExpired(AlignError):
    """A JSON API token that was valid once and has expired."""


def hash_password(password: str, *, salt: bytes | None = None, n: int = 2**14, r: int = 8, p: int = 1) -> str:
    """scrypt (RFC 7914) with a per-user random salt; stored as ``scrypt$n$r$p$salt$hash``."""
    salt = salt or os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    encode = lambda raw: base64.b64encode(raw).decode()  # noqa: E731
    return f"scrypt${n}${r}${p}${encode(salt)}${encode(digest)}"


def check_password(password: str, stored: str) -> bool:
    try:
        _, n, r, p, salt, digest = stored.split("$")
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected)
        )
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


def add_user(store: Store, name: str, password: str, role: str = "annotator", *, by: str = "cli") -> None:
    if role not in ROLES:
        raise AlignError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if not name or len(name) > 64 or not name.replace("_", "").replace("-", "").replace(".", "").isalnum():
        raise AlignError(f"user name {name!r}: use 1-64 letters, digits, '-', '_' or '.'")
    if len(password) < 8:
        raise AlignError("password must have at least 8 characters")
    try:
        with store.transaction() as session:
            session.add(User(name=name, role=role, password_hash=hash_password(password)))
            audit(session, by, "user_add", name=name, role=role)
    except IntegrityError as error:
        raise AlignError(f"user {name!r} already exists") from error


def list_users(store: Store) -> list[dict[str, Any]]:
    with store.transaction(write=False) as session:
        users = session.scalars(select(User).order_by(User.name)).all()
        return [{"name": u.name, "role": u.role, "created_at": u.created_at.isoformat()} for u in users]


def authenticate(store: Store, name: str, password: str, address: str | None = None) -> User | None:
    """The user if the password is right, else None; every attempt is audited.

    Raises :class:`LoginLocked` while the account or the client ``address`` is locked after failed
    logins (the password is then not even checked), and on the failure that locks it.
    """
    keys = throttle_keys(name, address)
    with store.transaction(write=False) as session:
        locked = current_lock(session, keys, now())
        user = session.scalar(select(User).where(User.name == name))
    ok = locked is None and user is not None and check_password(password, user.password_hash)
    for attempt in range(3):  # two first failures at once on PostgreSQL: one insert loses, then counts again
        try:
            with store.transaction() as session:
                at = now()
                locked = locked or current_lock(session, keys, at, for_update=True)
                if locked is not None:
                    audit(session, name, "login_refused", address=address, reason=str(locked))
                elif ok:
                    record_success(session, name)
                    audit(session, name, "login", address=address)
                else:
                    locked = record_failure(session, keys, store.security, name, at)
                    audit(session, name, "login_failed", address=address, locked=locked is not None)
            break
        except IntegrityError:
            if attempt == 2:
                raise
    if locked is not None:
        raise locked
    return user if ok else None


def get_user(store: Store, name: str) -> User:
    with store.transaction(write=False) as session:
        user = session.scalar(select(User).where(User.name == name))
    if user is None:
        raise AlignError(f"no user named {name!r}")
    return user


def create_api_session(store: Store, user: User) -> str:
    """A new bearer token for the JSON API, valid for ``store.security.session_ttl``."""
    token = secrets.token_urlsafe(32)
    at = now()
    with store.transaction() as session:
        session.execute(delete(ApiSession).where(ApiSession.expires_at < at - SESSION_KEPT))
        session.add(
            ApiSession(
                token_hash=hashlib.sha256(token.encode()).hexdigest(),
                user_id=user.id,
                expires_at=at + store.security.session_ttl,
            )
        )
    return token


def user_for_token(store: Store, token: str, *, cached_only: bool = False) -> User | None:
    """The token's user; None for an unknown token; raises :class:`SessionExpired` for an expired one.
    ``cached_only``: None unless the token is in the cache (no I/O: safe on an event loop).

    A known token is remembered in the process (``store.sessions``) with its expiry, so a request
    costs one SHA-256 and a dict look-up, not a database transaction. Sessions are never revoked before
    they expire and users never change, so the cached answer is the database's answer.
    """
    token_hash = hashlib.sha256(token.encode()).hexdigest()
    known = store.sessions.get(token_hash)
    if known is None and cached_only:
        return None
    if known is None:
        with store.transaction(write=False) as session:
            api_session = session.get(ApiSession, token_hash)
            if api_session is None:
                return None
            known = (session.get(User, api_session.user_id), api_session.expires_at)
        store.sessions.put(token_hash, known)
    user, expires_at = known
    if expires_at <= now():
        minutes = round(store.security.session_ttl.total_seconds() / 60)
        raise SessionExpired(
            f"session expired at {expires_at.isoformat(timespec='seconds')} UTC "
            f"(sessions last {minutes} minutes); log in again: POST /api/v1/login"
        )
    return user


def require_admin(user: User) -> None:
    if user.role != "admin":
        raise PermissionError(f"user {user.name!r} is not an admin")


