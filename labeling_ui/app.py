"""The labeling web app: a Gradio Blocks UI (login, ranking task, arena, admin tab) and the JSON API, one FastAPI app.

Gradio's ``auth=`` checks passwords against the store, throttled like the JSON API's login (the client
address reaches it through a context variable set by a small ASGI middleware), and its cookie sessions
expire after the same TTL as API tokens. Every handler looks the user up again from
``request.username`` and admin handlers check the role, so the Gradio API (``gradio_client``) is
guarded the same way as the page.
"""

from __future__ import annotations

import contextvars
import threading
import time
from datetime import timedelta

import gradio as gr
from fastapi import FastAPI, HTTPException
from starlette.routing import Mount

from labeling_ui import store as st
from labeling_ui.api import build_router, install_error_handlers
from labeling_ui.page import CSS, KEYBOARD_JS, build_blocks

CLIENT_ADDRESS: contextvars.ContextVar[str | None] = contextvars.ContextVar("client_address", default=None)


class ClientAddress:
    """ASGI middleware: the request's client address in ``CLIENT_ADDRESS`` (Gradio's auth callback gets none)."""

    def __init__(self, app) -> None:  # noqa: ANN001
        self.app = app

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        reset = CLIENT_ADDRESS.set((scope.get("client") or (None,))[0])
        try:
            await self.app(scope, receive, send)
        finally:
            CLIENT_ADDRESS.reset(reset)


class ExpiringTokens(dict):
    """Gradio's cookie sessions (token -> user name), each forgotten ``ttl`` seconds after its login."""

    def __init__(self, ttl: float) -> None:
        super().__init__()
        self.ttl, self.born = ttl, {}

    def __setitem__(self, token, user) -> None:  # noqa: ANN001
        self.born[token] = time.monotonic()
        super().__setitem__(token, user)

    def _live(self, token) -> bool:  # noqa: ANN001
        if dict.__contains__(self, token) and time.monotonic() - self.born.get(token, 0) > self.ttl:
            dict.pop(self, token, None)
            self.born.pop(token, None)
        return dict.__contains__(self, token)

    def get(self, token, default=None):  # noqa: ANN001, ANN201
        return dict.get(self, token, default) if self._live(token) else default

    def __contains__(self, token) -> bool:  # noqa: ANN001
        return self._live(token)

    def keys(self):  # noqa: ANN201
        return [token for token in list(dict.keys(self)) if self._live(token)]

    def __getitem__(self, token):  # noqa: ANN001, ANN204
        if not self._live(token):
            raise KeyError(token)
        return dict.__getitem__(self, token)


def create_app(store: st.Store, host: str = "127.0.0.1", port: int = 7860) -> FastAPI:
    """FastAPI app: JSON API under /api/v1, Gradio (login required) at /."""
    app = FastAPI(title="align labeling", docs_url=None, redoc_url=None)
    app.add_middleware(ClientAddress)
    install_error_handlers(app)
    app.include_router(build_router(store))
    blocks = build_blocks(store).queue(default_concurrency_limit=16)

    def check(name: str, password: str) -> bool:
        try:
            return st.authenticate(store, name, password, CLIENT_ADDRESS.get()) is not None
        except st.LoginLocked as error:  # 400: Gradio's login form shows "Incorrect credentials" only for 400
            raise HTTPException(400, str(error), headers={"Retry-After": str(error.retry_after)}) from error

    security = store.security
    lock_minutes = f"{security.lock_time.total_seconds() / 60:g}"

    app = gr.mount_gradio_app(
        app,
        blocks,
        path="/",
        auth=check,
        auth_message=(
            f"align labeling: log in with your account. After {security.lock_after} failed logins in a row "
            f"the account is locked for {lock_minutes} minutes; an admin can unlock it."
        ),
        server_name=host,
        server_port=port,
        ssr_mode=False,
        footer_links=[],
        head=KEYBOARD_JS,
        css=CSS,
    )
    gradio_app = next(route.app for route in reversed(app.routes) if isinstance(route, Mount))
    gradio_app.tokens = ExpiringTokens(store.security.session_ttl.total_seconds())
    return app


def serve(
    db_url: str | None,
    host: str = "127.0.0.1",
    port: int = 7860,
    claim_timeout_minutes: float = 60,
    security: st.SecuritySettings | None = None,
) -> None:
    """Run the app with uvicorn until interrupted; open tasks older than the timeout go back to the pool."""
    import uvicorn

    store = st.Store(db_url, security)
    app = create_app(store, host, port)
    stop = threading.Event()

    def expire_loop() -> None:
        while not stop.wait(60):
            st.expire_stale(store, timedelta(minutes=claim_timeout_minutes))

    threading.Thread(target=expire_loop, daemon=True).start()
    print(f"align labeling on http://{host}:{port} (database {store.url.split('@')[-1]})", flush=True)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
    finally:
        stop.set()
        store.close()
