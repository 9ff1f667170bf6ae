"""A real worker process, worker.py's own `main`, with one test seam: it SIGKILLs itself at a chosen step
of a chosen business key (tests/reliability/test_crashes.py).

    CRASH_STRIPE_URL=http://127.0.0.1:PORT CRASH_SPEC=/tmp/x/crash.json python -m tests.reliability.crash_worker

Everything else is configured as a production worker is (DATABASE_URL, TEMPORAL_ADDRESS, STRIPE_API_KEY,
SMTP_URL, BILLING_TASK_QUEUE): `worker.main` runs unchanged, with three adapters swapped for subclasses
that only add the seam, and its Stripe client built by worker.py's own function for localstripe (a
production worker has no Stripe base URL setting: STRIPE_API_KEY means api.stripe.com; its banner still says
so, the log lines name localstripe's address).

One tuning differs: the worker keeps no workflow cache, so it uses no sticky task queue. A real Temporal
server moves a workflow task queued for a dead worker's sticky queue back to the task queue after the
sticky schedule-to-start timeout (5 s); the time-skipping test server these tests run on has no such
timeout, and the task would wait there for ever. Without the cache every workflow task goes to the task
queue, as it would after that timeout; the workflows, activities and histories are a production worker's.

The seam is a JSON file, `{"step": ..., "key": ...}`, read when a step of that key runs, so the test can
arm it once it knows the key. It fires once: the file is renamed away before the kill, so the worker
started after the crash, with the same command, runs the step through. The steps (all but `smtp-before`
right after an effect, before anything records it):

- `ledger`: the grant `key` committed by the ledger, before the activity answers;
- `stripe`: Stripe confirmed the PaymentIntent of `key`, before the payment row records it;
- `smtp-before`: the email `key` rendered into the outbox, before the SMTP exchange;
- `smtp-after`: the SMTP server accepted the email `key` ("250"), before the outbox stamps it sent.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from dataclasses import replace
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import uvloop
from psycopg import AsyncConnection
from stripe import StripeClient

import worker
from ledger import Ledger
from mail.mailer import Mailer
from models.billing_types import ChargeRequest
from models.invoicing import Totals
from models.ledger_types import LedgerWriteResult, StartPeriod
from payments import Payments
from payments import stripe_client_from_settings as _stripe_client_from_settings
from settings import Settings


def _spec() -> Path:
    return Path(os.environ["CRASH_SPEC"])


def crash_if_armed(step: str, key: str) -> None:
    """SIGKILL this process if the seam is armed for (`step`, `key`): no cleanup, no finally, no flush of
    anything but the one line saying where it died."""
    spec = _spec()
    try:
        armed = json.loads(spec.read_text())
    except FileNotFoundError:
        return
    if armed != {"step": step, "key": key}:
        return
    spec.rename(spec.with_suffix(".fired"))  # once: the next worker runs the step through
    sys.stderr.write(f"crash_worker: SIGKILL at {step} of {key}\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class CrashLedger(Ledger):
    async def start_period(self, req: StartPeriod) -> LedgerWriteResult:
        result = await super().start_period(req)
        crash_if_armed("ledger", req.key)
        return result


class CrashPayments(Payments):
    async def _record_success(self, conn: AsyncConnection[Any], req: ChargeRequest, t: Totals, pi: str,
                              email: str | None) -> str:
        crash_if_armed("stripe", req.key)
        return await super()._record_success(conn, req, t, pi, email)


class CrashMailer(Mailer):
    def _deliver(self, msg: EmailMessage) -> None:  # runs in a thread: the kill takes the whole process
        crash_if_armed("smtp-before", str(msg["X-Billing-Key"]))
        super()._deliver(msg)

    async def _stamp(self, conn: AsyncConnection[Any], key: str, at: datetime) -> None:
        crash_if_armed("smtp-after", key)
        await super()._stamp(conn, key, at)


_build_worker = worker.build_worker


def _localstripe(settings: Settings, localstripe_url: str | None = None, *args: Any, **kwargs: Any) -> StripeClient:
    """worker.py's own Stripe client, with localstripe in place of api.stripe.com (what the worker builds
    around it, a ceiling included, is unchanged)."""
    return _stripe_client_from_settings(replace(settings, stripe_api_key=None), os.environ["CRASH_STRIPE_URL"],
                                        *args, **kwargs)


def _uncached_build_worker(*args: Any, **tuning: Any) -> Any:
    """worker.py's worker without a workflow cache, hence without a sticky task queue (see the module
    docstring)."""
    tuning.setdefault("max_cached_workflows", 0)
    return _build_worker(*args, **tuning)


def main() -> None:
    _spec()  # refuse to start without the seam's file path
    swaps: dict[str, object] = {"Ledger": CrashLedger, "Payments": CrashPayments, "Mailer": CrashMailer,
                                "stripe_client_from_settings": _localstripe, "build_worker": _uncached_build_worker}
    for name, value in swaps.items():
        if not hasattr(worker, name):  # worker.py changed: the seam would silently not apply
            sys.exit(f"crash_worker: worker.{name} is gone; update tests/reliability/crash_worker.py")
        setattr(worker, name, value)
    try:
        uvloop.run(worker.main())
    except worker.NotConfigured as exc:
        sys.exit(f"crash_worker: {exc}")


if __name__ == "__main__":
    main()
