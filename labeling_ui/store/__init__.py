"""The labeling data layer: SQLAlchemy models and the functions every front end calls.

Nothing here knows about Gradio or HTTP. Every write runs in one transaction. The claim of a
task slot is an atomic conditional update (``slots_taken < M``), and ``(item, annotator)`` is
unique in assignments and rankings, so M is never exceeded and nobody gets an item twice, on
SQLite (WAL, ``BEGIN IMMEDIATE``) and on PostgreSQL alike.

Modules, each one idea: ``schema`` (tables, constants), ``engine`` (the database, transactions,
audit writes), ``users`` (passwords, logins, API sessions), ``items`` (projects, imports),
``throttle`` (failed logins per account and address, locks), ``tasks`` (claiming, submitting, releasing), ``reports`` (progress, rankings, flags, the audit log).
Import from the package: ``from labeling_ui import store as st``.
"""

from __future__ import annotations

from labeling_ui.store.engine import SecuritySettings, Store, audit
from labeling_ui.store.items import ItemRecord, get_project, import_items, list_projects, read_jsonl
from labeling_ui.store.reports import (
    RankedItem,
    audit_log,
    flagged_items,
    project_progress,
    ranked_items,
    user_progress,
)
from labeling_ui.store.schema import (
    MAX_CANDIDATES,
    RENDER_MODES,
    ROLES,
    SESSION_LIFETIME,
    VOTES,
    ApiSession,
    Assignment,
    AuditEntry,
    Base,
    Battle,
    Candidate,
    Item,
    LoginThrottle,
    Project,
    Ranking,
    User,
    Vote,
    default_db_url,
    now,
)
from labeling_ui.store.tasks import (
    InvalidInput,
    RankingInput,
    Task,
    claim_next,
    expire_stale,
    parse_ranking,
    release,
    submit_ranking,
)
from labeling_ui.store.throttle import LoginLocked, login_throttles, unlock
from labeling_ui.store.users import (
    SessionExpired,
    add_user,
    authenticate,
    check_password,
    create_api_session,
    get_user,
    hash_password,
    list_users,
    require_admin,
    user_for_token,
)

__all__ = [
    "ApiSession",
    "Assignment",
    "AuditEntry",
    "Base",
    "Battle",
    "Candidate",
    "Item",
    "MAX_CANDIDATES",
    "RENDER_MODES",
    "LoginThrottle",
    "LoginLocked",
    "SecuritySettings",
    "SessionExpired",
    "login_throttles",
    "unlock",
    "Project",
    "ROLES",
    "Ranking",
    "SESSION_LIFETIME",
    "User",
    "VOTES",
    "Vote",
    "default_db_url",
    "now",
    "Store",
    "audit",
    "add_user",
    "authenticate",
    "check_password",
    "create_api_session",
    "get_user",
    "hash_password",
    "list_users",
    "require_admin",
    "user_for_token",
    "ItemRecord",
    "get_project",
    "import_items",
    "list_projects",
    "read_jsonl",
    "InvalidInput",
    "RankingInput",
    "Task",
    "claim_next",
    "expire_stale",
    "parse_ranking",
    "release",
    "submit_ranking",
    "RankedItem",
    "audit_log",
    "flagged_items",
    "project_progress",
    "ranked_items",
    "user_progress",
]
