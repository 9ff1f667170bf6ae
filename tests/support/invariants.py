"""The ledger's and billing's invariants (stated in migrations/versions/0001_ledger.sql, 0002_billing.sql
and 0003_auto_recharge.sql), checked against the database.

Each query returns the rows that break its invariant; all must be empty.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

INVARIANTS: dict[str, str] = {
    "I1 a bucket's remaining (the wallet's plan_remaining for the live plan bucket) = sum of its entries": """
        SELECT b.org_id, b.grant_key, b.remaining, w.plan_remaining, coalesce(sum(e.amount), 0) AS entries
        FROM buckets b JOIN wallets w ON w.org_id = b.org_id
        LEFT JOIN ledger_entries e ON e.bucket_id = b.id
        GROUP BY b.id, w.org_id
        HAVING CASE WHEN b.id = w.plan_bucket_id THEN w.plan_remaining ELSE b.remaining END
                   <> coalesce(sum(e.amount), 0)
            OR b.remaining < 0 OR b.remaining > b.granted""",
    "I2 wallet.topup_remaining = sum of pack remainders; no plan credits without a live plan bucket": """
        SELECT w.org_id, w.topup_remaining, s.topup, w.plan_remaining, w.plan_bucket_id
        FROM wallets w LEFT JOIN LATERAL (
            SELECT coalesce(sum(remaining), 0) AS topup FROM buckets WHERE org_id = w.org_id AND kind = 'pack') s
            ON true
        WHERE w.topup_remaining <> s.topup OR (w.plan_bucket_id IS NULL AND w.plan_remaining <> 0)""",
    "I3 wallet.held = -sum(reservation entries) = sum(open holds)": """
        SELECT w.org_id, w.held, w.open_holds, r.entries, h.open_cost, h.n
        FROM wallets w
        LEFT JOIN LATERAL (SELECT coalesce(-sum(amount), 0) AS entries FROM ledger_entries
                           WHERE org_id = w.org_id AND bucket_id IS NULL) r ON true
        LEFT JOIN LATERAL (SELECT coalesce(sum(cost), 0) AS open_cost, count(*) AS n FROM holds
                           WHERE org_id = w.org_id AND status = 'open') h ON true
        WHERE w.held <> r.entries OR w.held <> h.open_cost OR w.open_holds <> h.n""",
    "I0 every bucket entry names a bucket of its own organization": """
        SELECT e.id, e.org_id, e.bucket_id FROM ledger_entries e LEFT JOIN buckets b ON b.id = e.bucket_id
        WHERE e.bucket_id IS NOT NULL AND (b.id IS NULL OR b.org_id <> e.org_id)""",
    "I4 a plan bucket that is not live is closed (remaining 0)": """
        SELECT b.org_id, b.grant_key, b.remaining FROM buckets b JOIN wallets w ON w.org_id = b.org_id
        WHERE b.kind = 'plan' AND b.id IS DISTINCT FROM w.plan_bucket_id AND b.remaining <> 0""",
    "I5 never overdrawn: live balance covers what is held": """
        SELECT org_id, plan_remaining, topup_remaining, held FROM wallets
        WHERE plan_remaining + topup_remaining < 0""",
    "I6 usage events cost what their entries drew": """
        SELECT u.org_id, u.idem_key, u.cost, -coalesce(sum(e.amount), 0)
        FROM usage_events u LEFT JOIN ledger_entries e
            ON e.org_id = u.org_id AND e.kind = 'debit'
           AND e.ref = u.idem_key
        GROUP BY u.org_id, u.idem_key, u.cost HAVING u.cost <> -coalesce(sum(e.amount), 0)""",
    "B1 a succeeded payment has exactly one invoice, for its amount; others have none": """
        SELECT p.key, p.status, p.amount_cents, count(i.number), min(i.total_cents)
        FROM payments p LEFT JOIN invoices i ON i.payment_key = p.key
        GROUP BY p.key
        HAVING (p.status = 'succeeded') <> (count(i.number) = 1)
            OR (p.status = 'succeeded' AND min(i.total_cents) <> p.amount_cents)""",
    "B2 invoice numbers are gapless per year": """
        SELECT c.year, c.last, count(i.number), min(i.seq), max(i.seq)
        FROM invoice_counters c LEFT JOIN invoices i ON i.year = c.year
        GROUP BY c.year, c.last
        HAVING count(i.number) <> c.last OR coalesce(max(i.seq), 0) <> c.last
            OR bool_or(i.number <> format('INV-%s-%s', i.year, lpad(i.seq::text, 6, '0')))""",
    "R1 the wallet's recharge threshold is the enabled auto-recharge's threshold, else NULL": """
        SELECT w.org_id, w.recharge_threshold, a.enabled, a.threshold
        FROM wallets w LEFT JOIN auto_recharge a ON a.org_id = w.org_id
        WHERE w.recharge_threshold IS DISTINCT FROM (CASE WHEN a.enabled THEN a.threshold END)""",
    "R2 a pack bought (bucket keyed by a pack or auto-recharge payment) was paid: its payment succeeded": """
        SELECT b.org_id, b.grant_key, p.status FROM buckets b
        JOIN payments p ON p.key = b.grant_key
        WHERE b.kind = 'pack' AND p.status <> 'succeeded'""",
}


async def violations(conn: AsyncConnection[Any]) -> dict[str, list[tuple[Any, ...]]]:
    found: dict[str, list[tuple[Any, ...]]] = {}
    for name, sql in INVARIANTS.items():
        cur = await conn.execute(sql)
        rows = await cur.fetchall()
        if rows:
            found[name] = rows
    return found
