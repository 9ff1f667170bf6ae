"""Bucket order: the pure rule (models/buckets.py) and the ledger in PostgreSQL agree, draw by draw."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from ledger import Ledger
from models.buckets import Bucket, draw, live
from models.credits import from_milli
from models.errors import InsufficientCredits
from models.ledger_types import GrantPack
from tests.conftest import T0, OrgFactory

DAY = timedelta(days=1)


def test_model_draws_soonest_expiry_first_then_packs_oldest_first() -> None:
    now = datetime(2026, 3, 1, 12, tzinfo=UTC)
    buckets = [
        Bucket("pack-new", "pack", 5000, None, 3),
        Bucket("plan", "plan", 2000, now + 10 * DAY, 2),
        Bucket("pack-old", "pack", 1000, None, 1),
        Bucket("expired", "plan", 9000, now - DAY, 0),
    ]
    assert [b.key for b in live(buckets, now)] == ["plan", "pack-old", "pack-new"]
    assert draw(buckets, 2500, now) == [("plan", 2000), ("pack-old", 500)]
    assert draw(buckets, 8000, now) == [("plan", 2000), ("pack-old", 1000), ("pack-new", 5000)]
    assert draw(buckets, 8001, now) is None  # refused whole
    with pytest.raises(ValueError):
        draw(buckets, 0, now)


@pytest.mark.parametrize("seed", range(6))
async def test_ledger_draws_exactly_as_the_model(ledger: Ledger, new_org: OrgFactory, seed: int) -> None:
    rng = random.Random(seed)
    plan = rng.choice(["free", "starter"])
    org = await new_org(plan)
    now = T0
    seq = 0
    # The model's view of the wallet, kept by the rules alone.
    if plan == "free":
        model: dict[str, Bucket] = {}
    else:
        key = f"{org}:{T0.isoformat()}:start"
        model = {key: Bucket(key, "plan", 3_000_000, T0 + timedelta(days=31), seq)}
    for step in range(40):
        op = rng.random()
        if op < 0.2:
            seq += 1
            key = f"pack-{step}"
            amount = rng.choice([500, 1000]) * 1000
            await ledger.grant_pack(GrantPack(org, key, from_milli(amount), now))
            model[key] = Bucket(key, "pack", amount, None, seq)
            continue
        if op < 0.3:
            now += timedelta(hours=rng.choice([6, 13, 30]))
        if plan == "free":
            day = now.replace(hour=0, minute=0, second=0, microsecond=0)
            key = f"daily:{day:%Y-%m-%d}"
            if key not in model:  # the lazy daily grant the ledger makes on the day's first debit
                seq += 1
                model[key] = Bucket(key, "plan", 50_000, day + DAY, seq)
        quantity = rng.choice([1, 3, 20, 200, 900])
        expected = draw(model.values(), quantity * 5000, now)
        ref = f"d{step}"
        if expected is None:
            with pytest.raises(InsufficientCredits):
                await ledger.debit(org, "lead_enrichment", quantity=quantity, idempotency_key=ref, now=now)
            continue
        await ledger.debit(org, "lead_enrichment", quantity=quantity, idempotency_key=ref, now=now)
        actual = [(t.bucket, -int(t.credits * 1000)) for t in await ledger.transactions(org) if t.ref == ref]
        assert actual == expected, f"seed {seed} step {step}"
        for key, take in expected:
            model[key] = replace(model[key], remaining=model[key].remaining - take)
    balance = await ledger.balance(org, now=now)
    assert int(balance.available * 1000) == sum(b.remaining for b in live(model.values(), now))
