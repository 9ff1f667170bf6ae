"""Serving the API: uvicorn in this process's event loop, beside whatever else runs there (the main command's
worker, the test kit)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8480


@asynccontextmanager
async def serving(app: FastAPI, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> AsyncIterator[str]:
    """Serve `app` on host:port (0: a free port) until the block ends; yields its base URL."""
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="off",
                            http="httptools", loop="none")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server._serve())  # not serve(): the host process owns the signals
    while not server.started:
        if task.done():
            task.result()  # raises why it could not start (the port is taken, say)
            raise RuntimeError(f"the API server stopped before it started on {host}:{port}")
        await asyncio.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
