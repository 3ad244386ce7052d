"""The labeling web app: a Gradio Blocks UI (login, ranking task, arena, admin tab) and the JSON API, one FastAPI app.

Gradio's ``auth=`` checks passwords against the store; every handler looks the user up again
from ``request.username`` and admin handlers check the role, so the Gradio API (``gradio_client``)
is guarded the same way as the page.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import gradio as gr
from fastapi import FastAPI

from labeling_ui import store as st
from labeling_ui.api import build_router, install_error_handlers
from labeling_ui.page import CSS, KEYBOARD_JS, build_blocks


def create_app(store: st.Store, host: str = "127.0.0.1", port: int = 7860) -> FastAPI:
    """FastAPI app: JSON API under /api/v1, Gradio (login required) at /."""
    app = FastAPI(title="align labeling", docs_url=None, redoc_url=None)
    install_error_handlers(app)
    app.include_router(build_router(store))
    blocks = build_blocks(store).queue(default_concurrency_limit=16)

    def check(name: str, password: str) -> bool:
        return st.authenticate(store, name, password) is not None

    return gr.mount_gradio_app(
        app,
        blocks,
        path="/",
        auth=check,
        auth_message="align labeling: log in with your account",
        server_name=host,
        server_port=port,
        ssr_mode=False,
        footer_links=[],
        head=KEYBOARD_JS,
        css=CSS,
    )


def serve(
    db_url: str | None, host: str = "127.0.0.1", port: int = 7860, claim_timeout_minutes: float = 60
) -> None:
    """Run the app with uvicorn until interrupted; open tasks older than the timeout go back to the pool."""
    import uvicorn

    store = st.Store(db_url)
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
