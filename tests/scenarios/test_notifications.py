"""A notification that cannot be delivered never fails a money step, an update or a workflow: it is
recorded as failed on its outbox row, where operators find it (docs/product.md, failure model rule 2)."""

from __future__ import annotations

import psycopg

from testkit import TestKit


def failed_emails(kit: TestKit, org: str) -> list[tuple[str, str]]:
    with psycopg.connect(kit.database_url) as conn:
        rows = conn.execute("SELECT template, error FROM outbox WHERE org_id = %s AND failed_at IS NOT NULL "
                            "ORDER BY created_at", (org,)).fetchall()
    return [(template, error) for template, error in rows]


async def test_a_refused_mailbox_neither_undoes_the_charge_nor_stops_the_renewals(kit: TestKit, org: str) -> None:
    email = f"{org.lower()}@gone.test"
    kit.sink.refuse.add(email)  # the billing contact's mailbox does not exist: 550 for every message
    try:
        # Before: the receipt's refusal failed the subscribe update after the charge went through.
        sub = await kit.billing.subscribe(org, plan="pro", email=email)
        assert sub.status == "active" and [c.status for c in kit.charges(org)] == ["succeeded"]
        assert sub.period_start is not None and sub.period_end is not None
        await kit.advance(sub.period_end - kit.now() + (sub.period_end - sub.period_start) / 30)
        renewed = await kit.billing.subscription(org)
        assert (renewed.status, renewed.renewals) == ("active", 1)
        assert [c.purpose for c in kit.charges(org)] == ["subscription", "renewal"]
        assert [t for t, _ in failed_emails(kit, org)] == ["receipt", "receipt"]
        assert all("550" in error for _, error in failed_emails(kit, org))
        assert kit.emails(org) == []
    finally:
        kit.sink.refuse.discard(email)
