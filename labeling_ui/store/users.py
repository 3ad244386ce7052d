"""Users, password hashing (scrypt) and API sessions."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from typing import Any

from sqlalchemy import (
    select,
)
from sqlalchemy.exc import IntegrityError

from alignment.errors import AlignError
from labeling_ui.store.engine import Store, audit
from labeling_ui.store.schema import (
    ROLES,
    SESSION_LIFETIME,
    ApiSession,
    User,
    now,
)


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


def authenticate(store: Store, name: str, password: str) -> User | None:
    """The user if the password is right, else None; every attempt is audited."""
    with store.transaction() as session:
        user = session.scalar(select(User).where(User.name == name))
        ok = user is not None and check_password(password, user.password_hash)
        audit(session, name, "login" if ok else "login_failed")
        return user if ok else None


def get_user(store: Store, name: str) -> User:
    with store.transaction(write=False) as session:
        user = session.scalar(select(User).where(User.name == name))
    if user is None:
        raise AlignError(f"no user named {name!r}")
    return user


def create_api_session(store: Store, user: User) -> str:
    token = secrets.token_urlsafe(32)
    with store.transaction() as session:
        session.add(
            ApiSession(
                token_hash=hashlib.sha256(token.encode()).hexdigest(),
                user_id=user.id,
                expires_at=now() + SESSION_LIFETIME,
            )
        )
    return token


def user_for_token(store: Store, token: str) -> User | None:
    with store.transaction(write=False) as session:
        api_session = session.get(ApiSession, hashlib.sha256(token.encode()).hexdigest())
        if api_session is None or api_session.expires_at < now():
            return None
        return session.get(User, api_session.user_id)


def require_admin(user: User) -> None:
    if user.role != "admin":
        raise PermissionError(f"user {user.name!r} is not an admin")


