"""A real HTTP receiver of webhooks for the tests: it verifies each delivery's signature with the
`standardwebhooks` package (Webhook.verify), as a platform team's receiver would, and answers what the test
asks of it (200, or a failure status) per path."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass(frozen=True)
class Delivery:
    path: str
    webhook_id: str
    payload: dict[str, Any] | None   # None: the signature did not verify
    status: int                      # what the receiver answered

    @property
    def acked(self) -> bool:
        return 200 <= self.status < 300


@dataclass
class Receiver:
    secrets: dict[str, str] = field(default_factory=dict)   # path -> whsec_...
    status: dict[str, int] = field(default_factory=dict)    # path -> the status it answers (default 200)
    deliveries: list[Delivery] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/{path}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> Receiver:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _handle(self, request: web.Request) -> web.Response:
        path = request.match_info["path"]
        body = await request.read()
        headers = dict(request.headers)
        payload: dict[str, Any] | None
        try:
            payload = Webhook(self.secrets[path]).verify(body, headers)
            status = self.status.get(path, 200)
        except (KeyError, WebhookVerificationError):
            payload, status = None, 400
        self.deliveries.append(Delivery(path, headers.get("webhook-id", ""), payload, status))
        return web.Response(status=status, text=json.dumps({"ok": 200 <= status < 300}))

    def acked(self, path: str) -> list[dict[str, Any]]:
        """The payloads this path acknowledged (2xx), in the order they arrived."""
        return [d.payload for d in self.deliveries if d.path == path and d.acked and d.payload is not None]

    def attempts(self, path: str) -> list[Delivery]:
        return [d for d in self.deliveries if d.path == path]
