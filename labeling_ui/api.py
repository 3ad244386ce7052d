"""A small JSON HTTP API beside the Gradio app (load tests, scripts): bearer-token auth, same store functions.

POST /api/v1/login                         {"name", "password"} -> {"token", "role", "expires_in"}
POST /api/v1/projects/{project}/next       -> {"task": {...} | null}
POST /api/v1/tasks/{id}/submit             {"ranks": {candidate_id: rank}} -> {"ranking_id"}
POST /api/v1/tasks/{id}/ratings            {"ratings": {candidate_id: rating}} -> {"rating_id"} (rating projects)
POST /api/v1/tasks/{id}/corrections        {"text", "corrects": candidate_id | null} -> {"candidate_id"} (before submit;
                                           a task shown again lists them in "corrections")
DELETE /api/v1/tasks/{id}/corrections?corrects=candidate_id  (no ``corrects``: the own answer) -> {"withdrawn"}
POST /api/v1/tasks/{id}/skip | /flag       {"reason"}
GET  /api/v1/projects/{project}/me         own progress
POST /api/v1/projects/{project}/battles/next  -> {"battle": {...} | null} (no model names)
POST /api/v1/battles/{id}/vote             {"vote": "a" | "b" | "tie" | "both_bad"} -> models revealed
GET  /api/v1/admin/...                     progress, agreement, leaderboard, rankings, export (?format=pairs|kto|sft),
                                           users, audit,
                                           login locks (admins only); POST /api/v1/admin/unlock {"name" | "address"}

Errors are ``{"detail": "..."}``: 400 bad input, 401 not logged in or session expired, 403 not an admin,
422 a value of the wrong type (the detail names the field), 429 login locked (with ``Retry-After``).
"""

import functools
from collections.abc import Callable
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Body, Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import StrictInt, StrictStr
from starlette.concurrency import run_in_threadpool

from alignment.errors import AlignError
from labeling_ui import arena
from labeling_ui import store as st
from labeling_ui.admin import agreement_report, leaderboard_report
from labeling_ui.export import export_rows, jsonl_text


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AlignError)
    async def bad_request(_request: Request, error: AlignError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=400)

    @app.exception_handler(st.InvalidInput)
    async def invalid_input(_request: Request, error: st.InvalidInput) -> JSONResponse:
        return JSONResponse({"detail": str(error), "fields": error.fields}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, error: RequestValidationError) -> JSONResponse:
        problems = [(".".join(str(part) for part in e["loc"]), e["msg"]) for e in error.errors()]
        return JSONResponse(
            {"detail": "; ".join(f"{field}: {message}" for field, message in problems),
             "fields": [field for field, _ in problems]},
            status_code=422,
        )

    @app.exception_handler(st.LoginLocked)
    async def locked(_request: Request, error: st.LoginLocked) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=429, headers={"Retry-After": str(error.retry_after)})

    @app.exception_handler(PermissionError)
    async def forbidden(_request: Request, error: PermissionError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=403)


# Threads that run annotators' store calls (claim, submit, rate, correct, skip, flag, arena). More requests than
# this wait in line (first come, first served) instead of taking a thread each: on a few cores, threads beyond a
# handful only fight over the GIL, each database round trip waits for it again, and every extra thread holds a
# database connection (docs/benchmarks.md, "Labeling server under load"). Logins (the KDF) and admin reports keep
# the default thread pool, so a long export or a burst of logins never holds annotators up.
ANNOTATOR_THREADS = 4


def build_router(store: st.Store, annotator_threads: int = ANNOTATOR_THREADS) -> APIRouter:
    router = APIRouter(prefix="/api/v1")
    lane = anyio.CapacityLimiter(annotator_threads)

    async def in_lane(fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on one of the annotator threads, waiting in line for one."""
        return await anyio.to_thread.run_sync(functools.partial(fn, *args), limiter=lane)

    async def current_user(authorization: Annotated[str | None, Header()] = None) -> st.User:
        # async: a known token is answered from memory on the event loop, without a trip to the thread pool
        scheme, _, token = (authorization or "").partition(" ")
        try:
            user = None
            if scheme.lower() == "bearer" and token:
                user = st.user_for_token(store, token, cached_only=True) or await run_in_threadpool(
                    st.user_for_token, store, token
                )
        except st.SessionExpired as error:
            raise HTTPException(401, str(error), headers={"WWW-Authenticate": "Bearer"}) from error
        if user is None:
            raise HTTPException(
                401, "log in first: POST /api/v1/login, then send 'Authorization: Bearer <token>'"
            )
        return user

    def current_admin(user: Annotated[st.User, Depends(current_user)]) -> st.User:
        st.require_admin(user)
        return user

    User = Annotated[st.User, Depends(current_user)]
    Admin = Annotated[st.User, Depends(current_admin)]

    @router.post("/login")
    def login(
        request: Request, name: Annotated[StrictStr, Body()], password: Annotated[StrictStr, Body()]
    ) -> dict[str, Any]:
        user = st.authenticate(store, name, password, request.client.host if request.client else None)
        if user is None:
            raise HTTPException(401, "wrong user name or password")
        return {
            "token": st.create_api_session(store, user),
            "role": user.role,
            "expires_in": int(store.security.session_ttl.total_seconds()),
        }

    @router.get("/projects")
    def projects(_user: User) -> list[str]:
        return st.list_projects(store)

    @router.post("/projects/{project}/next")
    async def next_task(project: str, user: User) -> dict[str, Any]:
        task = await in_lane(st.claim_next, store, user, project)
        return {"task": task.model_dump() if task else None}

    @router.get("/projects/{project}/me")
    async def my_progress(project: str, user: User) -> dict[str, int]:
        return await in_lane(st.user_progress, store, user, project)

    @router.post("/tasks/{assignment_id}/submit")
    async def submit(assignment_id: int, user: User, body: Annotated[Any, Body()] = None) -> dict[str, int]:
        ranks = body.get("ranks") if isinstance(body, dict) else None
        if ranks is None:
            raise AlignError(
                'send {"ranks": {"<candidate id>": <rank>, ...}} with a rank for every candidate'
            )
        return {"ranking_id": await in_lane(st.submit_ranking, store, user, assignment_id, ranks)}

    @router.post("/tasks/{assignment_id}/ratings")
    async def rate(assignment_id: int, user: User, body: Annotated[Any, Body()] = None) -> dict[str, int]:
        ratings = body.get("ratings") if isinstance(body, dict) else None
        if ratings is None:
            raise AlignError('send {"ratings": {"<candidate id>": <rating>, ...}} with a rating for every candidate')
        return {"rating_id": await in_lane(st.submit_ratings, store, user, assignment_id, ratings)}

    @router.post("/tasks/{assignment_id}/corrections")
    async def correct(
        assignment_id: int, user: User, text: Annotated[StrictStr, Body()],
        corrects: Annotated[StrictInt | None, Body()] = None,
    ) -> dict[str, int]:
        return {"candidate_id": await in_lane(st.submit_correction, store, user, assignment_id, text, corrects)}

    @router.delete("/tasks/{assignment_id}/corrections")
    async def withdraw(assignment_id: int, user: User, corrects: int | None = None) -> dict[str, bool]:
        return {"withdrawn": await in_lane(st.withdraw_correction, store, user, assignment_id, corrects)}

    @router.post("/tasks/{assignment_id}/skip")
    async def skip(assignment_id: int, user: User, reason: Annotated[str, Body(embed=True)] = "") -> dict[str, str]:
        await in_lane(st.release, store, user, assignment_id, "skipped", reason)
        return {"status": "skipped"}

    @router.post("/tasks/{assignment_id}/flag")
    async def flag(assignment_id: int, user: User, reason: Annotated[str, Body(embed=True)] = "") -> dict[str, str]:
        await in_lane(st.release, store, user, assignment_id, "flagged", reason)
        return {"status": "flagged"}

    @router.post("/projects/{project}/battles/next")
    async def next_battle(project: str, user: User) -> dict[str, Any]:
        view = await in_lane(arena.next_battle, store, user, project)
        return {"battle": view.model_dump() if view else None}

    @router.post("/battles/{battle_id}/vote")
    async def vote(battle_id: int, user: User, vote: Annotated[str, Body(embed=True)]) -> dict[str, Any]:
        return (await in_lane(arena.cast_vote, store, user, battle_id, vote)).model_dump()

    @router.get("/admin/projects/{project}/leaderboard")
    def leaderboard(project: str, _admin: Admin) -> dict[str, Any]:
        return leaderboard_report(store, project)

    @router.get("/admin/projects/{project}/progress")
    def progress(project: str, _admin: Admin) -> dict[str, Any]:
        return st.project_progress(store, project)

    @router.get("/admin/projects/{project}/agreement")
    def agreement(project: str, _admin: Admin) -> dict[str, Any]:
        return agreement_report(store, project)

    @router.get("/admin/projects/{project}/rankings")
    def rankings(project: str, _admin: Admin, annotator: str | None = None) -> list[dict[str, Any]]:
        return [item.model_dump() for item in st.ranked_items(store, project, annotator)]

    @router.get("/admin/projects/{project}/export")
    def export(
        project: str, admin: Admin, mode: str = "all", kind: Annotated[str, Query(alias="format")] = "pairs"
    ) -> PlainTextResponse:
        rows = export_rows(store, project, kind, admin.name, lambda _: "(http)", mode)  # type: ignore[arg-type]
        return PlainTextResponse(jsonl_text(rows), media_type="application/jsonl")

    @router.get("/admin/users")
    def users(_admin: Admin) -> list[dict[str, Any]]:
        return st.list_users(store)

    @router.post("/admin/users")
    def add_user(
        admin: Admin,
        name: Annotated[str, Body()],
        password: Annotated[str, Body()],
        role: Annotated[str, Body()] = "annotator",
    ) -> dict[str, str]:
        st.add_user(store, name, password, role, by=admin.name)
        return {"name": name, "role": role}

    @router.get("/admin/locks")
    def locks(_admin: Admin) -> list[dict[str, Any]]:
        return st.login_throttles(store)

    @router.post("/admin/unlock")
    def unlock(
        admin: Admin,
        name: Annotated[StrictStr | None, Body()] = None,
        address: Annotated[StrictStr | None, Body()] = None,
    ) -> dict[str, int]:
        return {"cleared": st.unlock(store, name, address, by=admin.name)}

    @router.get("/admin/audit")
    def audit(_admin: Admin, limit: int = 200) -> list[dict[str, Any]]:
        return st.audit_log(store, limit)

    return router
