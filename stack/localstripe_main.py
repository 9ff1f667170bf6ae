"""Run localstripe (the fake Stripe) in memory, on loopback.

    python -m stack.localstripe_main --port 0 [--state FILE]

localstripe as shipped pickles its whole store to /tmp/localstripe.pickle on every write (quadratic in
the number of objects, and shared by every instance on the machine) and binds every interface. Here the
store stays in memory; with `--state` it is loaded from FILE at start and saved to it (atomically) when
it changed, every few seconds and at shutdown, so `tasks.py run` keeps its customers across restarts.
The port actually bound is printed on the first line of stdout (`--port 0` picks a free one).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pickle
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

_dirty = False


def _mark_dirty(self: object) -> None:
    global _dirty
    _dirty = True


def _no_load(self: object) -> None:
    return None


def _save(store: dict[str, object], path: Path) -> None:
    global _dirty
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(dict(store), f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)
    _dirty = False


_refund_keys: dict[str, None] = {}  # insertion-ordered, as the store lists them


def _index_refunds(resources: Any) -> None:
    """Serialising a charge lists its refunds, which localstripe does by scanning the whole store: every
    charge answer cost O(objects), and the fake Stripe's CPU grew with each benchmark round. Refunds are
    found through an index of refund keys instead (same answers)."""
    plain_setitem = resources.Store.__setitem__

    def setitem(store: Any, key: str, value: object) -> None:
        plain_setitem(store, key, value)
        if key.startswith("refund:"):
            _refund_keys[key] = None

    def refunds(charge: Any) -> Any:
        li = resources.List("/v1/charges/" + charge.id + "/refunds")
        li._list = [r for k in _refund_keys if (r := resources.store.get(k)) is not None
                    and getattr(r, "charge", None) == charge.id]
        return li

    resources.Store.__setitem__ = setitem
    resources.Charge.refunds = property(refunds)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="stack.localstripe_main")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--state", type=Path, default=None, help="load/save the store here (default: memory only)")
    args = parser.parse_args(argv)

    from localstripe import resources

    # Before anything touches the store: never read or write /tmp/localstripe.pickle.
    resources.Store.dump_to_disk = _mark_dirty
    resources.Store.try_load_from_disk = _no_load
    _index_refunds(resources)

    from aiohttp import web
    from localstripe import server

    store = resources.store
    state: Path | None = args.state
    if state is not None and state.exists():
        with open(state, "rb") as f:
            dict.update(store, pickle.load(f))  # dict.update: no dirty marks
        _refund_keys.update(dict.fromkeys(k for k in store if k.startswith("refund:")))

    async def saver(app: web.Application) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                await asyncio.sleep(5)
                if _dirty and state is not None:
                    _save(store, state)

        task = asyncio.get_running_loop().create_task(loop())
        yield
        task.cancel()
        if _dirty and state is not None:
            _save(store, state)

    if state is not None:
        state.parent.mkdir(parents=True, exist_ok=True)
        server.app.cleanup_ctx.append(saver)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    print(sock.getsockname()[1], flush=True)
    # Nobody reads stdout past the port line: send the rest nowhere rather than fill a pipe.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    web.run_app(server.app, sock=sock, print=None, access_log=None, handle_signals=True)


if __name__ == "__main__":
    main()
