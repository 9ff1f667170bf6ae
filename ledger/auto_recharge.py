"""Auto-recharge's records on PostgreSQL: its settings and the workflow's reads and writes.

Settings live in `auto_recharge`; the one setting the debit needs (the threshold, while enabled) is
mirrored on the wallet row in the same transaction, under the wallet lock, with the lease
`recharge_resume_at` that collapses concurrent triggers (ledger/sql/). What a recharge buys, a pack or an
amount of credits, is its `pack` column (models/auto_recharge.py encode_buys, migration 0008). Settings
are checked against the current catalog version; a round prices on the version current when it reads them
(RechargeContext.catalog_version).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from ledger.gateway import Ledger
from models.auto_recharge import check_settings, decode_buys, encode_buys, spending_window
from models.auto_recharge_types import (
    DEFAULT_SPENDING_LIMIT_CENTS,
    AutoRechargeSettings,
    DisableRecharge,
    PlanRecharge,
    RechargeContext,
    SettleRecharge,
    SettleResult,
)
from models.catalog import CATALOGS
from models.checks import check_id, check_time
from models.credits import from_milli, to_milli
from models.errors import UnknownOrganization


class AutoRecharges:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.pool = ledger.pool

    # -- settings (BillingClient) ---------------------------------------------------------------------

    async def set(
        self, org_id: str, *, threshold: Decimal, pack: str | None = None,
        spending_limit_cents: int = DEFAULT_SPENDING_LIMIT_CENTS, enabled: bool = True,
        now: datetime | None = None, credits: Decimal | None = None,
    ) -> AutoRechargeSettings:
        check_id("org_id", org_id)
        value = check_settings(CATALOGS.current, threshold=threshold, pack=pack,
                               spending_limit_cents=spending_limit_cents, enabled=enabled, credits=credits)
        at = check_time("now", now) if now is not None else self.ledger.clock()
        threshold_milli = to_milli(value)
        buys = encode_buys(pack, None if credits is None else Decimal(credits))
        async with self.ledger.wallet_locked(org_id) as conn:
            await conn.execute(
                "INSERT INTO auto_recharge (org_id, enabled, threshold, pack, spending_limit_cents, updated_at) "
                "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (org_id) DO UPDATE SET enabled = EXCLUDED.enabled, "
                "threshold = EXCLUDED.threshold, pack = EXCLUDED.pack, "
                "spending_limit_cents = EXCLUDED.spending_limit_cents, disabled_reason = NULL, "
                "version = auto_recharge.version + 1, updated_at = EXCLUDED.updated_at",
                (org_id, enabled, threshold_milli, buys, spending_limit_cents, at))
            # New settings re-arm: the next debit under the threshold asks for a recharge at once.
            await conn.execute(
                "UPDATE wallets SET recharge_threshold = %s, recharge_resume_at = NULL WHERE org_id = %s",
                (threshold_milli if enabled else None, org_id))
        pack, amount = decode_buys(buys)
        return AutoRechargeSettings(org_id, enabled, from_milli(threshold_milli), pack, spending_limit_cents,
                                    credits=amount)

    async def get(self, org_id: str) -> AutoRechargeSettings | None:
        check_id("org_id", org_id)
        row = await self.pool.fetchone(
            "SELECT w.org_id, a.enabled, a.threshold, a.pack, a.spending_limit_cents, a.disabled_reason "
            "FROM wallets w LEFT JOIN auto_recharge a ON a.org_id = w.org_id WHERE w.org_id = %s", (org_id,))
        if row is None:
            raise UnknownOrganization(org_id)
        if row[1] is None:
            return None
        pack, credits = decode_buys(row[3])
        return AutoRechargeSettings(org_id, row[1], from_milli(row[2]), pack, row[4], row[5], credits)

    # -- the workflow's steps -------------------------------------------------------------------------

    async def plan(self, req: PlanRecharge) -> RechargeContext:
        """Read what a round decides on: settings, balance (expired credits excluded), spending so far."""
        now = check_time("now", req.now)
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT a.enabled, a.threshold, a.pack, a.spending_limit_cents, a.version, w.daily_grant, "
                "w.period_start, w.period_end, b.plan_credits + b.topup - b.held, "
                "p.email, coalesce(p.currency, 'EUR'), coalesce(p.vat_rate, 0) "
                "FROM wallets w CROSS JOIN LATERAL ledger_balance(w.org_id, %s) b "
                "LEFT JOIN auto_recharge a ON a.org_id = w.org_id "
                "LEFT JOIN billing_profiles p ON p.org_id = w.org_id WHERE w.org_id = %s", (now, req.org_id))
            row = await cur.fetchone()
            if row is None:
                raise UnknownOrganization(req.org_id)
            (enabled, threshold_milli, pack, limit_cents, version, daily_milli, p_start, p_end, available_milli,
             email, currency, vat) = row
            start, end = spending_window(daily_milli > 0, p_start, p_end, now)
            cur = await conn.execute(
                "SELECT count(*), coalesce(sum(amount_cents) FILTER (WHERE status = 'succeeded' "
                "AND created_at >= %s AND created_at < %s), 0) "
                "FROM payments WHERE org_id = %s AND purpose = 'auto_recharge'", (start, end, req.org_id))
            counted = await cur.fetchone()
        assert counted is not None
        pack_name, credits = decode_buys(pack or "")
        return RechargeContext(
            req.org_id, bool(enabled), from_milli(threshold_milli or 0), pack_name or "", limit_cents or 0,
            from_milli(available_milli), int(counted[1]), start, end, int(counted[0]), email, currency, Decimal(vat),
            version or 0, credits, CATALOGS.current.version)

    async def settle(self, req: SettleRecharge) -> SettleResult:
        now = check_time("now", req.now)
        async with self.ledger.wallet_locked(req.org_id) as conn:
            cur = await conn.execute(
                "SELECT b.plan_credits + b.topup - b.held, w.recharge_threshold, coalesce(a.version, 0) FROM wallets w "
                "CROSS JOIN LATERAL ledger_balance(w.org_id, %s) b LEFT JOIN auto_recharge a ON a.org_id = w.org_id "
                "WHERE w.org_id = %s", (now, req.org_id))
            row = await cur.fetchone()
            assert row is not None
            available_milli, threshold_milli, version = int(row[0]), row[1], row[2]
            # New settings since the round read them: no block; the round's caller looks again.
            block = req.blocked_until if version == req.settings_version else None
            below = threshold_milli is not None and available_milli < threshold_milli and block is None
            # A block, a fresh lease while still under (the debit's own lease length), or re-armed.
            await conn.execute(
                "UPDATE wallets SET recharge_resume_at = CASE WHEN %s THEN %s::timestamptz + ledger_recharge_lease() "
                "ELSE %s::timestamptz END WHERE org_id = %s", (below, now, block, req.org_id))
        return SettleResult(req.org_id, below, from_milli(available_milli))

    async def disable(self, req: DisableRecharge) -> bool:
        """Turn auto-recharge off; False (nothing changed) when its settings changed since the round."""
        now = check_time("now", req.now)
        async with self.ledger.wallet_locked(req.org_id) as conn:
            cur = await conn.execute(
                "UPDATE auto_recharge SET enabled = false, disabled_reason = %s, version = version + 1, "
                "updated_at = %s WHERE org_id = %s AND version = %s",
                (req.reason, now, req.org_id, req.settings_version))
            if cur.rowcount != 1:
                return False
            await conn.execute(
                "UPDATE wallets SET recharge_threshold = NULL, recharge_resume_at = NULL WHERE org_id = %s",
                (req.org_id,))
            return True
