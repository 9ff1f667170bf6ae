"""The audit: proof that the books balance (DESIGN.md section 8), run as `billing audit` in production and at
the end of every reliability test (tests/reliability/conftest.py `assert_books_balance`).

What it checks, each under its check name:

* the invariants that hold after every commit (`INVARIANTS`, stated at the top of the migration scripts; the
  test suite also checks them after every test through tests/support/invariants.py): the ledger's I0-I6 and
  overage's O1-O2,
  `invoice` and `invoice_paid` (B1, from each side), B2 (gapless invoice numbers), R1 and R2;
* `pack_paid`: every pack bucket was paid: a succeeded pack or auto-recharge payment of its organization
  under its grant key (R2 the other way round; the ledger's own tests grant packs without payments, so it is
  no invariant of every commit);
* `grant` and `receipt`: every succeeded payment has exactly one grant and its receipt, sent or recorded as
  failed (the links below);
* `pending`: no payment stays pending longer than `pending_bound`;
* `subscription`: every paying organization has a running `Subscription` workflow (with a Temporal client);
* `incident`: every open incident (search attribute BillingIncident) is listed. An incident is no broken
  book but operators must see it: its findings are of kind "incident", the others "broken".

How a payment links to its grant and its receipt (workflows/subscription.py, pack_purchase.py,
auto_recharge.py; keys from models/keys.py, never spelled here):

* subscription, renewal, retry: the grant is the period's plan credits, start_period under
  `period_key(org, S, "credits")` with S the period start written in the payment's key; the receipt
  `step_key(payment key, "receipt")`;
* upgrade: the plan change under the payment's own key (a wallet_ops row; a plan bucket under it when credits
  were left); the receipt is the confirmation `step_key(payment key, "email")` (upgrade_confirmed);
* seats: no grant (seats change no credits); the receipt `step_key(payment key, "email")` (seats_changed);
* pack, auto_recharge: a pack bucket under the payment's own key; the receipt `step_key(payment key, "receipt")`.

What cannot be derived from the data alone, and what is checked instead:
* The period start S is read back from the payment's key and proven by rebuilding the key with
  `period_key` (models/keys.py has builders, no parsers). A key that does not rebuild is reported.
* An annual plan paid more than a month late (an incident open that long) takes the credits of the month
  current at payment time (`SubscriptionWorkflow._paid`), not those at S: nothing in the payment row says
  which month, so such a payment is reported without its grant (an operator finds it a month further).
* One grant per payment is checked where the data says it: the ledger writes one grant entry per key, so two
  grant entries under a payment's grant key is a double grant; two succeeded payments of one period (a period
  paid twice) claim one grant between them.
* The credits a pack bucket holds are not compared with the packs paid for: the payment names its pack only
  in the invoice line's text.

Read-only: one REPEATABLE READ READ ONLY transaction (one snapshot) for the books, short reads for the list of
paying organizations; every statement under a timeout. Each check lists at most `limit` findings of each kind
and counts them all. Payments that succeeded less than `pending_bound` ago are in flight: their grant and
receipt are not due yet (`AuditReport.in_flight`), but a double grant is never in flight.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Collection, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from psycopg import AsyncConnection, OperationalError
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import WorkflowExecutionStatus
from temporalio.api.workflowservice.v1 import DescribeWorkflowExecutionRequest
from temporalio.client import Client
from temporalio.converter import default as default_converter
from temporalio.service import RPCError, RPCStatusCode

from ledger.pool import LeanPool
from models.catalog import CATALOG
from models.errors import ServiceUnavailable
from models.keys import pack_key, pack_workflow_id, period_key, stamp, step_key, subscription_workflow_id
from models.subscription_types import Subscription
from workflows.common import INCIDENT

Kind = Literal["broken", "incident"]

DEFAULT_PENDING_BOUND = timedelta(hours=1)
DEFAULT_LIMIT = 100
STATEMENT_TIMEOUT = timedelta(minutes=5)   # each SQL statement of the audit (rule 5: every wait has a deadline)
RPC_TIMEOUT = timedelta(seconds=10)        # each Temporal call
CONNECT_TIMEOUT_SECONDS = 10
BATCH = 1000                               # payments (and paying organizations) read per round trip
TEMPORAL_CONCURRENCY = 16                  # describe calls in flight


# -- the report -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    check: str
    org_id: str | None   # None: a finding of no single organization (B2 is per year)
    detail: str
    kind: Kind = "broken"


@dataclass(frozen=True)
class CheckResult:
    name: str
    rule: str
    findings: tuple[Finding, ...]   # at most `limit` of each kind
    broken: int                     # every broken finding, listed or not
    incidents: int                  # every incident finding, listed or not
    examined: int | None = None     # rows the check looked at, where it walks rows (payments, organizations)
    skipped: str | None = None      # why the check did not run

    @property
    def truncated(self) -> bool:
        return len(self.findings) < self.broken + self.incidents


@dataclass(frozen=True)
class AuditReport:
    now: datetime
    pending_bound: timedelta
    checks: tuple[CheckResult, ...]
    in_flight: int   # succeeded payments younger than pending_bound: grant and receipt not due yet

    @property
    def findings(self) -> list[Finding]:
        return [f for c in self.checks for f in c.findings]

    @property
    def broken(self) -> list[Finding]:
        return [f for f in self.findings if f.kind == "broken"]

    @property
    def incidents(self) -> list[Finding]:
        return [f for f in self.findings if f.kind == "incident"]

    @property
    def ok(self) -> bool:
        """No broken book (open incidents are not broken books)."""
        return all(c.broken == 0 for c in self.checks)

    @property
    def skipped(self) -> dict[str, str]:
        return {c.name: c.skipped for c in self.checks if c.skipped is not None}

    def check(self, name: str) -> CheckResult:
        return next(c for c in self.checks if c.name == name)

    def to_json(self) -> dict[str, Any]:
        return {
            "now": self.now.isoformat(), "pending_bound_seconds": self.pending_bound.total_seconds(),
            "ok": self.ok, "broken": sum(c.broken for c in self.checks),
            "incidents": sum(c.incidents for c in self.checks), "in_flight": self.in_flight,
            "checks": [dataclasses.asdict(c) for c in self.checks],
        }


class _Collector:
    """One check's findings: counts them all, keeps the first `limit` of each kind."""

    def __init__(self, name: str, rule: str, limit: int) -> None:
        self.name, self.rule, self.limit = name, rule, limit
        self.kept: list[Finding] = []
        self.counts: dict[Kind, int] = {"broken": 0, "incident": 0}
        self.examined: int | None = None
        self.skipped: str | None = None

    def add(self, org_id: str | None, detail: str, kind: Kind = "broken") -> None:
        self.counts[kind] += 1
        if self.counts[kind] <= self.limit:
            self.kept.append(Finding(self.name, org_id, detail, kind))

    def count(self, n: int = 1) -> None:
        self.examined = (self.examined or 0) + n

    def result(self) -> CheckResult:
        return CheckResult(self.name, self.rule, tuple(self.kept), self.counts["broken"], self.counts["incident"],
                           self.examined, self.skipped)


# -- the invariants of every commit -----------------------------------------------------------------


@dataclass(frozen=True)
class SqlCheck:
    name: str
    rule: str
    sql: str  # the rows that break the rule, the organization first (NULL when the rule is not per organization)


INVARIANT_CHECKS: tuple[SqlCheck, ...] = (
    SqlCheck("I0", "every bucket entry names a bucket of its own organization", """
        SELECT e.org_id, e.id, e.bucket_id FROM ledger_entries e LEFT JOIN buckets b ON b.id = e.bucket_id
        WHERE e.bucket_id IS NOT NULL AND (b.id IS NULL OR b.org_id <> e.org_id)"""),
    SqlCheck("I1", "a bucket's remaining (the wallet's plan_remaining for the live plan bucket) = sum of its "
                   "entries, within 0..granted", """
        SELECT b.org_id, b.grant_key, b.remaining, w.plan_remaining, coalesce(sum(e.amount), 0) AS entries
        FROM buckets b JOIN wallets w ON w.org_id = b.org_id
        LEFT JOIN ledger_entries e ON e.bucket_id = b.id
        GROUP BY b.id, w.org_id
        HAVING CASE WHEN b.id = w.plan_bucket_id THEN w.plan_remaining ELSE b.remaining END
                   <> coalesce(sum(e.amount), 0)
            OR b.remaining < 0 OR b.remaining > b.granted"""),
    SqlCheck("I2", "wallet.topup_remaining = sum of pack remainders; no plan credits without a live plan bucket", """
        SELECT w.org_id, w.topup_remaining, s.topup, w.plan_remaining, w.plan_bucket_id
        FROM wallets w LEFT JOIN LATERAL (
            SELECT coalesce(sum(remaining), 0) AS topup FROM buckets WHERE org_id = w.org_id AND kind = 'pack') s
            ON true
        WHERE w.topup_remaining <> s.topup OR (w.plan_bucket_id IS NULL AND w.plan_remaining <> 0)"""),
    # Open holds reserve of the balance (held) and, past it, in overage (overage_held; 0009_overage.sql).
    SqlCheck("I3", "wallet.held + wallet.overage_held = -sum(reservation entries); held = sum(cost - overage) and "
                   "overage_held = sum(overage) of open holds", """
        SELECT w.org_id, w.held, w.overage_held, w.open_holds, r.entries, h.open_cost, h.open_overage, h.n
        FROM wallets w
        LEFT JOIN LATERAL (SELECT coalesce(-sum(amount), 0) AS entries FROM ledger_entries
                           WHERE org_id = w.org_id AND kind IN ('hold', 'release')) r ON true
        LEFT JOIN LATERAL (SELECT coalesce(sum(cost - overage), 0) AS open_cost,
                                  coalesce(sum(overage), 0) AS open_overage, count(*) AS n FROM holds
                           WHERE org_id = w.org_id AND status = 'open') h ON true
        WHERE w.held + w.overage_held <> r.entries OR w.held <> h.open_cost OR w.overage_held <> h.open_overage
           OR w.open_holds <> h.n"""),
    SqlCheck("I4", "a plan bucket that is not live is closed (remaining 0)", """
        SELECT b.org_id, b.grant_key, b.remaining FROM buckets b JOIN wallets w ON w.org_id = b.org_id
        WHERE b.kind = 'plan' AND b.id IS DISTINCT FROM w.plan_bucket_id AND b.remaining <> 0"""),
    SqlCheck("I5", "never overdrawn: the live balance covers what is held", """
        SELECT org_id, plan_remaining, topup_remaining, held FROM wallets
        WHERE plan_remaining + topup_remaining < 0"""),
    SqlCheck("I6", "usage events cost what their entries drew, and recorded as overage past the balance", """
        SELECT u.org_id, u.idem_key, u.cost, -coalesce(sum(e.amount), 0) AS drawn
        FROM usage_events u LEFT JOIN ledger_entries e
            ON e.org_id = u.org_id AND e.kind IN ('debit', 'overage')
           AND e.ref = u.idem_key
        GROUP BY u.org_id, u.idem_key, u.cost HAVING u.cost <> -coalesce(sum(e.amount), 0)"""),
    SqlCheck("O1", "wallet.overage (recorded, not yet closed) = -sum of its overage and overage_closed entries", """
        SELECT w.org_id, w.overage, o.entries
        FROM wallets w
        LEFT JOIN LATERAL (SELECT coalesce(-sum(amount), 0) AS entries FROM ledger_entries
                           WHERE org_id = w.org_id AND kind IN ('overage', 'overage_closed')) o ON true
        WHERE w.overage <> o.entries"""),
    SqlCheck("O2", "an overage close is entered once, for its credits (none for 0), and every overage_closed entry "
                   "has its close", """
        SELECT coalesce(c.org_id, e.org_id) AS org_id, coalesce(c.close_key, e.ref) AS close_key, c.credits,
               e.entries, e.amount
        FROM overage_closes c
        FULL JOIN (SELECT org_id, ref, count(*) AS entries, sum(amount) AS amount FROM ledger_entries
                   WHERE kind = 'overage_closed' GROUP BY org_id, ref) e
            ON e.org_id = c.org_id AND e.ref = c.close_key
        WHERE c.org_id IS NULL OR (c.credits = 0) <> (e.org_id IS NULL)
           OR (c.credits > 0 AND (e.entries <> 1 OR e.amount <> c.credits))"""),
    SqlCheck("invoice", "B1: a succeeded (or invoiced) payment has exactly one invoice, of its organization and for "
                        "its amount", """
        SELECT p.org_id, p.key, p.amount_cents, count(i.number) AS invoices, min(i.total_cents) AS invoiced_cents,
               min(i.org_id) AS invoice_org
        FROM payments p LEFT JOIN invoices i ON i.payment_key = p.key
        WHERE p.status IN ('succeeded', 'invoiced')
        GROUP BY p.key
        HAVING count(i.number) <> 1 OR min(i.total_cents) <> p.amount_cents OR bool_or(i.org_id <> p.org_id)"""),
    # The foreign key invoices.payment_key -> payments makes an invoice without any payment row impossible;
    # this is the rest: an invoice of a pending or declined payment, or of another organization's. An open invoice
    # (invoice terms, 0011) belongs to a payment invoiced and awaited; a paid one to a succeeded payment.
    SqlCheck("invoice_paid", "B1: a paid invoice belongs to a succeeded payment of its organization, an open one "
                             "to an invoiced one", """
        SELECT i.org_id, i.number, i.payment_key, i.status, p.status AS payment_status, p.org_id AS payment_org
        FROM invoices i LEFT JOIN payments p ON p.key = i.payment_key
        WHERE p.key IS NULL OR p.org_id <> i.org_id
           OR p.status <> CASE i.status WHEN 'open' THEN 'invoiced' ELSE 'succeeded' END"""),
    SqlCheck("B2", "invoice numbers are gapless per year", """
        SELECT NULL::text AS org_id, c.year, c.last, count(i.number) AS invoices, min(i.seq) AS min_seq,
               max(i.seq) AS max_seq
        FROM invoice_counters c LEFT JOIN invoices i ON i.year = c.year
        GROUP BY c.year, c.last
        HAVING count(i.number) <> c.last OR coalesce(max(i.seq), 0) <> c.last
            OR bool_or(i.number <> format('INV-%s-%s', i.year, lpad(i.seq::text, 6, '0')))"""),
    SqlCheck("R1", "the wallet's recharge threshold is the enabled auto-recharge's threshold, else NULL", """
        SELECT w.org_id, w.recharge_threshold, a.enabled, a.threshold
        FROM wallets w LEFT JOIN auto_recharge a ON a.org_id = w.org_id
        WHERE w.recharge_threshold IS DISTINCT FROM (CASE WHEN a.enabled THEN a.threshold END)"""),
    SqlCheck("R2", "a pack bought (bucket keyed by a pack or auto-recharge payment) was paid: its payment "
                   "succeeded", """
        SELECT b.org_id, b.grant_key, p.status FROM buckets b
        JOIN payments p ON p.key = b.grant_key
        WHERE b.kind = 'pack' AND p.status <> 'succeeded'"""),
    SqlCheck("Q1", "a quota's use in a period = the sum of its recorded quantities (0012_usage_insight.sql)", """
        SELECT coalesce(u.org_id, e.org_id) AS org_id, coalesce(u.quota, e.quota) AS quota,
               coalesce(u.period_start, e.period_start) AS period_start, u.used, e.total
        FROM quota_usage u
        FULL JOIN (SELECT org_id, quota, period_start, sum(quantity) AS total FROM quota_events
                   GROUP BY org_id, quota, period_start) e
            ON e.org_id = u.org_id AND e.quota = u.quota AND e.period_start = u.period_start
        WHERE u.org_id IS NULL OR e.org_id IS NULL OR u.used <> e.total"""),
)

# The same queries by "name rule" (tests/support/invariants.py checks them after every test).
INVARIANTS: dict[str, str] = {f"{c.name} {c.rule}": c.sql for c in INVARIANT_CHECKS}

# R2 the other way round: every pack bucket paid (it subsumes R2, so the audit runs it instead of R2).
PACK_PAID = SqlCheck("pack_paid", "every pack bucket was paid: a succeeded pack or auto-recharge payment of its "
                                  "organization under its grant key", """
    SELECT b.org_id, b.grant_key, b.granted, p.status AS payment_status, p.purpose AS payment_purpose,
           p.org_id AS payment_org
    FROM buckets b LEFT JOIN payments p ON p.key = b.grant_key
    WHERE b.kind = 'pack'
      AND (p.key IS NULL OR p.status <> 'succeeded' OR p.org_id <> b.org_id
           OR p.purpose NOT IN ('pack', 'auto_recharge'))""")

SQL_CHECKS: tuple[SqlCheck, ...] = (*(c for c in INVARIANT_CHECKS if c.name != "R2"), PACK_PAID)

RULES: dict[str, str] = {
    **{c.name: c.rule for c in SQL_CHECKS},
    "grant": "a succeeded payment has exactly one grant: its period's credits, its plan change or its pack "
             "(none for seats)",
    "receipt": "a succeeded payment's receipt was sent or recorded as failed",
    "pending": "no payment stays pending longer than the bound",
    "subscription": "every paying organization (a billing profile and a wallet on a paid plan) has a running "
                    "Subscription workflow",
    "incident": "every open incident is listed (not a broken book: operators act on it)",
}


async def violations(conn: AsyncConnection[Any]) -> dict[str, list[tuple[Any, ...]]]:
    """Every invariant of every commit (`INVARIANTS`) with the rows that break it; empty when all hold."""
    found: dict[str, list[tuple[Any, ...]]] = {}
    for name, sql in INVARIANTS.items():
        cur = await conn.execute(sql)
        rows = await cur.fetchall()
        if rows:
            found[name] = rows
    return found


# -- how a payment links to its grant and its receipt ------------------------------------------------

PERIOD_PURPOSES = ("subscription", "renewal", "retry")
PACK_PURPOSES = ("pack", "auto_recharge")
SUBSCRIPTION_PURPOSES = (*PERIOD_PURPOSES, "upgrade", "seats")   # the charges of the Subscription workflow
_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_STAMP_LEN = len(stamp(_EPOCH))


def period_of(org_id: str, key: str) -> datetime | None:
    """The moment S of a key built as `period_key(org_id, S, purpose)`, proven by building it again; None
    for a key that is no period key of this organization."""
    head = period_key(org_id, _EPOCH, "")             # "{org}:{stamp}:"
    prefix = head[: len(head) - _STAMP_LEN - 1]        # "{org}:"
    if not key.startswith(prefix):
        return None
    rest = key[len(prefix):]
    try:
        at = datetime.strptime(rest[:_STAMP_LEN], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None
    return at if period_key(org_id, at, rest[_STAMP_LEN + 1:]) == key else None


def pack_purchase_of(org_id: str, key: str) -> str | None:
    """The caller's idempotency key of a pack bought under `pack_key(org_id, idem)`, proven by building the key
    again ('%' never occurs in ids, models/checks.py, so '%3A' can only be an escaped ':')."""
    prefix = pack_key(org_id, "")
    if not key.startswith(prefix):
        return None
    idem = key[len(prefix):].replace("%3A", ":")
    return idem if idem and pack_key(org_id, idem) == key else None


GrantKind = Literal["period", "plan_change", "pack", "none"]


@dataclass(frozen=True)
class Link:
    """Where a succeeded payment's grant and receipt are (`grant_key` None: none or underivable)."""

    grant: GrantKind
    grant_key: str | None
    receipt_key: str
    problem: str | None = None   # why the grant cannot be derived


def link_of(org_id: str, key: str, purpose: str) -> Link:
    if purpose in PERIOD_PURPOSES:
        start = period_of(org_id, key)
        if start is None:
            return Link("period", None, step_key(key, "receipt"),
                        "its key is no period key of its organization (models/keys.py period_key): "
                        "its period, so its grant, cannot be derived")
        return Link("period", period_key(org_id, start, "credits"), step_key(key, "receipt"))
    if purpose == "upgrade":
        return Link("plan_change", key, step_key(key, "email"))
    if purpose == "seats":
        return Link("none", None, step_key(key, "email"))
    if purpose in PACK_PURPOSES:
        return Link("pack", key, step_key(key, "receipt"))
    return Link("none", None, step_key(key, "receipt"), f"unknown purpose {purpose!r}: no grant rule")


# -- the audit --------------------------------------------------------------------------------------


@dataclass
class _Scope:
    orgs: list[str] | None
    excluded: list[str]

    def sql(self, column: str) -> str:
        """A condition on `column` (an organization id); NULL ids pass only when no `orgs` are named."""
        return (f"(%(orgs)s::text[] IS NULL OR {column} = ANY(%(orgs)s::text[])) "
                f"AND ({column} IS NULL OR NOT {column} = ANY(%(excluded)s::text[]))")

    def params(self, **more: Any) -> dict[str, Any]:
        return {"orgs": self.orgs, "excluded": self.excluded, **more}


@dataclass
class _Incidents:
    """Open incidents found by the subscription check: organization -> failed step."""

    steps: dict[str, str] = field(default_factory=dict)
    covered: set[str] = field(default_factory=set)   # payment keys an open incident accounts for


Db = str | LeanPool | AsyncConnection[Any]


@asynccontextmanager
async def _connection(db: Db) -> AsyncIterator[AsyncConnection[Any]]:
    if isinstance(db, AsyncConnection):
        yield db
    elif isinstance(db, LeanPool):
        async with db.connection() as conn:
            yield conn
    else:
        try:
            conn = await AsyncConnection.connect(db, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS)
        except OperationalError as err:
            raise ServiceUnavailable(f"the database cannot be reached: {err}") from None
        try:
            yield conn
        finally:
            await conn.close()


@asynccontextmanager
async def _read_only(conn: AsyncConnection[Any], *, snapshot: bool) -> AsyncIterator[AsyncConnection[Any]]:
    async with conn.transaction():
        level = "REPEATABLE READ" if snapshot else "READ COMMITTED"
        await conn.execute(f"SET TRANSACTION ISOLATION LEVEL {level}, READ ONLY")
        await conn.execute("SELECT set_config('statement_timeout', %s, true)",
                           (f"{int(STATEMENT_TIMEOUT.total_seconds() * 1000)}ms",))
        yield conn


def _detail(names: Iterable[str], row: Iterable[Any]) -> str:
    return ", ".join(f"{n}={v}" for n, v in zip(names, row, strict=True))


async def run_audit(
    db: Db, *, temporal: Client | None, namespace: str | None = None, now: datetime,
    pending_bound: timedelta = DEFAULT_PENDING_BOUND, limit: int = DEFAULT_LIMIT,
    orgs: Collection[str] | None = None, exclude_orgs: Collection[str] = (),
) -> AuditReport:
    """Audit the books at `now`. `db`: a database URL, the project's LeanPool or an idle psycopg connection.
    `temporal`: a client for the subscription and incident checks (None: reported as skipped); `namespace`
    defaults to the client's. `orgs` limits the audit to those organizations (then B2, which is per year, is
    left out); `exclude_orgs` sets organizations aside."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if pending_bound < timedelta(0) or limit < 0:
        raise ValueError("pending_bound and limit cannot be negative")
    scope = _Scope(None if orgs is None else sorted(set(orgs)), sorted(set(exclude_orgs)))
    subscription = _Collector("subscription", RULES["subscription"], limit)
    incident = _Collector("incident", RULES["incident"], limit)
    incidents = _Incidents()
    async with _connection(db) as conn:
        # Temporal first: the books' checks need to know which organizations have an open incident.
        if temporal is None:
            subscription.skipped = incident.skipped = "no Temporal client given"
        else:
            await _check_subscriptions(conn, temporal, namespace or temporal.namespace, scope, subscription,
                                       incident, incidents)
        async with _read_only(conn, snapshot=True):
            sql_results = [await _run_sql_check(conn, c, scope, limit) for c in SQL_CHECKS]
            grant = _Collector("grant", RULES["grant"], limit)
            receipt = _Collector("receipt", RULES["receipt"], limit)
            pending = _Collector("pending", RULES["pending"], limit)
            if incidents.steps:
                await _covered_payments(conn, incidents)
            in_flight = await _check_payments(conn, temporal, namespace, scope, now - pending_bound, grant, receipt,
                                              incidents)
            await _check_pending(conn, scope, now - pending_bound, pending, incidents)
    checks = (*sql_results, grant.result(), receipt.result(), pending.result(), subscription.result(),
              incident.result())
    return AuditReport(now, pending_bound, checks, in_flight)


async def _run_sql_check(conn: AsyncConnection[Any], check: SqlCheck, scope: _Scope, limit: int) -> CheckResult:
    if scope.orgs is not None and check.name == "B2":
        return CheckResult(check.name, check.rule, (), 0, 0, None, "per year, not per organization: left out "
                                                                    "when the audit is limited to organizations")
    cur = await conn.execute(
        # '%' doubled: the check's own text (B2's format pattern) is no placeholder.
        f"SELECT q.*, count(*) OVER () FROM ({check.sql.replace('%', '%%')}) q WHERE {scope.sql('q.org_id')} "
        "ORDER BY 1, 2 LIMIT %(limit)s", scope.params(limit=limit))
    rows = await cur.fetchall()
    names = [d.name for d in (cur.description or [])][1:-1]
    findings = tuple(Finding(check.name, row[0], _detail(names, row[1:-1])) for row in rows)
    return CheckResult(check.name, check.rule, findings, int(rows[0][-1]) if rows else 0, 0)


# -- payments: grants, receipts, pending -----------------------------------------------------------

# A payment's grant and receipt as the database has them, for a batch of (org, grant key, receipt key).
_FOLLOW_UPS = """
    SELECT x.i,
           EXISTS (SELECT 1 FROM wallet_ops o WHERE o.org_id = x.org_id AND o.op_key = x.grant_key) AS op,
           (SELECT b.kind FROM buckets b WHERE b.org_id = x.org_id AND b.grant_key = x.grant_key) AS bucket,
           m.key IS NOT NULL AS mail, m.org_id AS mail_org, m.sent_at, m.failed_at, m.created_at AS mail_created
    FROM unnest(%s::int[], %s::text[], %s::text[], %s::text[]) AS x(i, org_id, grant_key, receipt_key)
    LEFT JOIN outbox m ON m.key = x.receipt_key"""


async def _check_payments(conn: AsyncConnection[Any], temporal: Client | None, namespace: str | None,
                          scope: _Scope, due_before: datetime, grant: _Collector, receipt: _Collector,
                          incidents: _Incidents) -> int:
    """`grant` and `receipt` over every succeeded payment, streamed in (org, key) order so a period paid twice
    is seen within one organization's payments. Returns how many were in flight."""
    # The ledger writes one grant entry per key: any (org, ref) with two is granted twice.
    cur = await conn.execute(
        "SELECT org_id, ref, count(*) FROM ledger_entries WHERE kind = 'grant' "
        f"AND {scope.sql('org_id')} GROUP BY org_id, ref HAVING count(*) > 1", scope.params())
    granted_twice = {(org, ref): n for org, ref, n in await cur.fetchall()}
    in_flight = 0
    claims: dict[str, str] = {}   # one organization's period grant keys -> the payment that claims it
    claims_org: str | None = None
    async with conn.cursor(name="audit_payments") as payments:
        await payments.execute(
            "SELECT org_id, key, purpose, updated_at FROM payments WHERE status = 'succeeded' "
            f"AND {scope.sql('org_id')} ORDER BY org_id, key", scope.params())
        while rows := await payments.fetchmany(BATCH):
            links = [link_of(org, key, purpose) for org, key, purpose, _ in rows]
            cur = await conn.execute(_FOLLOW_UPS, (
                list(range(len(rows))), [r[0] for r in rows], [lk.grant_key for lk in links],
                [lk.receipt_key for lk in links]))
            state = {r[0]: r[1:] for r in await cur.fetchall()}
            for i, ((org, key, purpose, updated_at), link) in enumerate(zip(rows, links, strict=True)):
                grant.count()
                receipt.count()
                if org != claims_org:
                    claims, claims_org = {}, org
                op, bucket, mail, mail_org, sent_at, failed_at, mail_created = state[i]
                due = updated_at <= due_before
                in_flight += not due
                problems: list[str] = []
                if link.problem is not None:
                    problems.append(link.problem)
                if link.grant_key is not None:
                    twice = granted_twice.get((org, link.grant_key))
                    if twice:
                        problems.append(f"granted {twice} times under {link.grant_key}")
                    if link.grant == "period":
                        other = claims.setdefault(link.grant_key, key)
                        if other != key:
                            problems.append(f"its period was paid already by {other}: both claim the one grant "
                                            f"{link.grant_key}")
                    missing = {"period": not op, "plan_change": not op, "pack": bucket != "pack"}.get(link.grant)
                    if due and missing:
                        what = "a pack bucket" if link.grant == "pack" else "the ledger operation"
                        problems.append(f"no grant: {what} under {link.grant_key} is missing"
                                        + (f" (a {bucket} bucket is there)" if bucket else ""))
                for problem in problems:
                    await _report(grant, org, key, purpose, f"{purpose} payment {key}: {problem}", temporal,
                                  namespace, incidents)
                receipt_problem = None
                if mail and mail_org != org:
                    receipt_problem = f"its receipt {link.receipt_key} belongs to {mail_org}"
                elif due and not mail:
                    receipt_problem = f"no receipt {link.receipt_key} in the outbox"
                elif due and sent_at is None and failed_at is None:
                    receipt_problem = f"receipt {link.receipt_key} neither sent nor failed since {mail_created}"
                if receipt_problem is not None:
                    await _report(receipt, org, key, purpose, f"{purpose} payment {key}: {receipt_problem}", temporal,
                                  namespace, incidents)
    return in_flight


async def _check_pending(conn: AsyncConnection[Any], scope: _Scope, before: datetime, pending: _Collector,
                         incidents: _Incidents) -> None:
    async with conn.cursor(name="audit_pending") as cur:
        await cur.execute(
            "SELECT org_id, key, purpose, created_at FROM payments WHERE status = 'pending' "
            f"AND created_at <= %(before)s AND {scope.sql('org_id')} ORDER BY org_id, key",
            scope.params(before=before))
        while rows := await cur.fetchmany(BATCH):
            for org, key, purpose, created_at in rows:
                pending.count()
                await _report(pending, org, key, purpose, f"{purpose} payment {key} pending since {created_at}",
                              None, None, incidents)


async def _report(check: _Collector, org: str, key: str, purpose: str, detail: str, temporal: Client | None,
                  namespace: str | None, incidents: _Incidents) -> None:
    """A payment's finding: kind "incident" when an open incident accounts for it, else broken."""
    if key in incidents.covered:
        check.add(org, f"{detail} (open incident of the subscription at step {incidents.steps[org]!r}: it retries "
                       "the step, whose effects are keyed)", "incident")
        return
    if purpose == "pack" and temporal is not None:
        idem = pack_purchase_of(org, key)
        if idem is not None:
            step = (await _describe(temporal, namespace or temporal.namespace, pack_workflow_id(org, idem)))[1]
            if step is not None:
                check.add(org, f"{detail} (open incident of {pack_workflow_id(org, idem)} at step {step!r}: it "
                               "retries until granted)", "incident")
                return
    check.add(org, detail)


async def _covered_payments(conn: AsyncConnection[Any], incidents: _Incidents) -> None:
    """An open subscription incident accounts for its organization's latest subscription payment: the failed
    step is the period's or an update's unfinished change (workflows/subscription.py: nothing else starts
    until it completes), whose charge, grant and receipt are keyed, so the retry completes them. Older
    payments were complete before, so the incident accounts for nothing else."""
    cur = await conn.execute(
        "SELECT DISTINCT ON (org_id) key FROM payments WHERE org_id = ANY(%s) AND purpose = ANY(%s) "
        "ORDER BY org_id, created_at DESC, key DESC", (list(incidents.steps), list(SUBSCRIPTION_PURPOSES)))
    incidents.covered = {key for (key,) in await cur.fetchall()}


# -- Temporal: running subscriptions, open incidents ------------------------------------------------

_RUNNING = WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_RUNNING


async def _describe(client: Client, namespace: str, workflow_id: str) -> tuple[str | None, str | None]:
    """(status name, or None when there is no such workflow; the open incident's step, or None). The raw
    service call: the SDK's describe() decodes every search attribute and some servers' record of an unset
    one does not decode (testkit/__init__.py)."""
    try:
        resp = await client.workflow_service.describe_workflow_execution(
            DescribeWorkflowExecutionRequest(namespace=namespace,
                                             execution=WorkflowExecution(workflow_id=workflow_id)),
            retry=True, timeout=RPC_TIMEOUT)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return None, None
        raise ServiceUnavailable(f"Temporal did not describe {workflow_id}: {err.message}") from None
    info = resp.workflow_execution_info
    step: Any = None
    payload = info.search_attributes.indexed_fields.get(INCIDENT.name)
    if payload is not None and payload.data:
        step = default_converter().payload_converter.from_payload(payload)
        if isinstance(step, list):
            step = step[0] if step else None
    return WorkflowExecutionStatus.Name(info.status), (str(step) if step else None)


async def _paying_orgs(conn: AsyncConnection[Any], scope: _Scope) -> AsyncIterator[list[str]]:
    """Paying organizations as the database knows them, in batches: a wallet on a paid plan (the catalog's rule,
    Plan.is_free) and a billing profile. Paid plans come only with a subscription (BillingClient.open_wallet
    refuses them), whose first step creates the billing profile; a wallet on a paid plan without one was opened
    by hand (the ledger's own tests do), not by a subscription."""
    free = [name for name, plan in CATALOG.plans.items() if plan.is_free]
    after = ""
    while True:
        async with _read_only(conn, snapshot=False):
            cur = await conn.execute(
                "SELECT w.org_id FROM wallets w JOIN billing_profiles p ON p.org_id = w.org_id "
                f"WHERE w.org_id > %(after)s AND NOT w.plan = ANY(%(free)s) AND {scope.sql('w.org_id')} "
                "ORDER BY w.org_id LIMIT %(batch)s", scope.params(after=after, free=free, batch=BATCH))
            batch = [org for (org,) in await cur.fetchall()]
        if not batch:
            return
        yield batch
        after = batch[-1]


async def _check_subscriptions(conn: AsyncConnection[Any], client: Client, namespace: str, scope: _Scope,
                               subscription: _Collector, incident: _Collector, incidents: _Incidents) -> None:
    gate = asyncio.Semaphore(TEMPORAL_CONCURRENCY)

    async def one(org: str) -> tuple[str, str | None, str | None]:
        async with gate:
            status, step = await _describe(client, namespace, subscription_workflow_id(org))
        return org, status, step

    async for batch in _paying_orgs(conn, scope):
        for org, status, step in await asyncio.gather(*(one(org) for org in batch)):
            subscription.count()
            wf_id = subscription_workflow_id(org)
            if status != WorkflowExecutionStatus.Name(_RUNNING):
                state = "none" if status is None else status.removeprefix("WORKFLOW_EXECUTION_STATUS_")
                subscription.add(org, f"paying, but no running Subscription workflow {wf_id} ({state})")
                continue
            if step is not None:
                incidents.steps[org] = step
                text = (await _incident_text(client, wf_id, step) if namespace == client.namespace
                        else f"open incident at step {step!r}")  # the client's handles are of its namespace
                incident.add(org, f"{wf_id}: {text}", "incident")


async def _incident_text(client: Client, workflow_id: str, step: str) -> str:
    """The incident as the subscription tells it (step, attempts, next try, error); the step alone when the
    workflow does not answer in time (no worker polling, say)."""
    try:
        sub = await client.get_workflow_handle(workflow_id).query(
            "state", result_type=Subscription, rpc_timeout=RPC_TIMEOUT)
    except Exception:  # any failure to ask is no finding of its own: the search attribute says enough
        return f"open incident at step {step!r}"
    return sub.incident or f"open incident at step {step!r}"
