"""Login throttling: failed logins counted per account and per client address, in the database.

After ``lock_after`` failures in a row on an account (``lock_after_per_address`` from one client
address) further logins there are refused for ``lock_time``, without a password check; each further
lock lasts twice as long, up to ``max_lock_time``. Failures older than ``failure_window`` with no lock
since are forgotten, and a successful login clears its account's count. The counts live in the
``login_throttle`` table, so a lock holds across restarts and for every server process. Every
failure, lock and refused attempt is in the audit log; an admin lifts a lock with :func:`unlock`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from alignment.errors import AlignError
from labeling_ui.store.engine import SecuritySettings, Store, audit
from labeling_ui.store.schema import LoginThrottle, now

SCOPES = ("account", "address")


class LoginLocked(AlignError):
    """Logins refused for now; ``retry_after`` is in seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def throttle_keys(name: str, address: str | None) -> list[tuple[str, str]]:
    keys = [("account", name[:256])]
    if address:
        keys.append(("address", address[:256]))
    return keys


def _describe(scope: str, key: str) -> str:
    return f"account {key!r}" if scope == "account" else f"address {key}"


def _lock_error(scope: str, key: str, until: datetime, at: datetime) -> LoginLocked:
    seconds = max(1, int((until - at).total_seconds() + 0.999))
    how = f"align label users unlock {key}" if scope == "account" else f"align label users unlock --address {key}"
    return LoginLocked(
        f"too many failed logins: {_describe(scope, key)} is locked for {seconds} s more "
        f"(until {until.isoformat(timespec='seconds')} UTC); try again later or ask an admin to unlock it ({how})",
        seconds,
    )


def current_lock(
    session: Session, keys: list[tuple[str, str]], at: datetime, *, for_update: bool = False
) -> LoginLocked | None:
    """The lock in force on any of these keys, as the error to raise; None when logins may go on.
    ``for_update``: in a writing transaction, lock the rows (PostgreSQL) before they are counted."""
    for scope, key in keys:
        row = session.get(LoginThrottle, (scope, key), with_for_update=for_update or None)
        if row is not None and row.locked_until is not None and row.locked_until > at:
            return _lock_error(scope, key, row.locked_until, at)
    return None


def record_failure(
    session: Session, keys: list[tuple[str, str]], settings: SecuritySettings, name: str, at: datetime
) -> LoginLocked | None:
    """Count a failed login on each key (in the caller's transaction); the lock it caused, if any."""
    locked = None
    for scope, key in keys:
        row = session.get(LoginThrottle, (scope, key), with_for_update=True)
        if row is None:
            row = LoginThrottle(scope=scope, key=key, failures=0, locks=0)
            session.add(row)
        last = max((t for t in (row.last_failure_at, row.locked_until) if t is not None), default=None)
        if last is None or at - last > settings.failure_window:  # quiet since the last failure or lock
            row.failures, row.locks = 0, 0
        row.failures += 1
        row.last_failure_at = at
        limit = settings.lock_after if scope == "account" else settings.lock_after_per_address
        if row.failures >= limit:
            duration = min(settings.lock_time * 2**row.locks, settings.max_lock_time)
            row.locked_until, row.locks, row.failures = at + duration, row.locks + 1, 0
            audit(session, name, "login_locked", scope=scope, key=key,
                  until=row.locked_until.isoformat(timespec="seconds"), seconds=int(duration.total_seconds()))
            locked = locked or _lock_error(scope, key, row.locked_until, at)
    return locked


def record_success(session: Session, name: str) -> None:
    """A right password clears the account's count (an address's count only ages out)."""
    session.execute(delete(LoginThrottle).where(LoginThrottle.scope == "account", LoginThrottle.key == name[:256]))


def unlock(store: Store, name: str | None = None, address: str | None = None, *, by: str = "cli") -> int:
    """Lift the lock and forget the failures of an account and/or an address; returns how many were cleared."""
    if not name and not address:
        raise AlignError("say which account (name) or client address to unlock")
    keys = [(scope, key) for scope, key in (("account", name), ("address", address)) if key]
    with store.transaction() as session:
        cleared = 0
        for scope, key in keys:
            removed = session.execute(
                delete(LoginThrottle).where(LoginThrottle.scope == scope, LoginThrottle.key == key)
            ).rowcount
            audit(session, by, "unlock", scope=scope, key=key, cleared=removed > 0)
            cleared += removed
    return cleared


def unlock_message(name: str | None, address: str | None, cleared: int) -> str:
    """What :func:`unlock` did, in words (the CLI and the admin tab say it)."""
    what = " and ".join(x for x in (name and f"account {name}", address and f"address {address}") if x)
    return f"unlocked {what}" if cleared else f"{what}: no failed logins on record"


def login_throttles(store: Store) -> list[dict[str, Any]]:
    """Accounts and addresses with failed logins on record: failures, locks, and the lock in force."""
    at = now()
    with store.transaction(write=False) as session:
        rows = session.scalars(select(LoginThrottle).order_by(LoginThrottle.scope, LoginThrottle.key)).all()
        return [
            {
                "scope": row.scope,
                "key": row.key,
                "failures": row.failures,
                "locks": row.locks,
                "last_failure_at": row.last_failure_at.isoformat() if row.last_failure_at else None,
                "locked_until": row.locked_until.isoformat()
                if row.locked_until and row.locked_until > at
                else None,
            }
            for row in rows
        ]
