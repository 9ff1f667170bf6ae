"""Tags on debits and holds (models/tags.py, ledger_debit / ledger_debit_batch / ledger_hold / ledger_settle):
stored on the usage row by every path a debit takes, on a hold and on its committed usage row; part of what an
idempotency key names; refused whole, nothing written, when they break the rule."""

from __future__ import annotations

import asyncio
import json
import sys
import unicodedata
from decimal import Decimal
from typing import Any

import pytest

from ledger import Ledger
from models.errors import IdempotencyConflict, InvalidRequest
from models.ledger_types import DebitResult
from models.tags import MAX_TAGS, check_tags, tag_filter, tags_json
from tests.conftest import T0, OrgFactory
from tests.support.statements import Statements

D = Decimal
SPRING = {"campaign": "spring", "country": "FR", "result": "ok"}


async def usage_tags(ledger: Ledger, org: str) -> dict[str, Any]:
    """Each usage row's tags (None for none), by its key."""
    async with ledger.pool.connection() as conn:
        cur = await conn.execute("SELECT idem_key, tags FROM usage_events WHERE org_id = %s", (org,))
        return dict(await cur.fetchall())


async def hold_tags(ledger: Ledger, org: str) -> dict[str, Any]:
    async with ledger.pool.connection() as conn:
        cur = await conn.execute("SELECT idem_key, tags FROM holds WHERE org_id = %s", (org,))
        return dict(await cur.fetchall())


async def written(ledger: Ledger, org: str) -> tuple[int, int, int, Decimal]:
    """What an organization's ledger holds: usage rows, holds, entries, and the available balance."""
    async with ledger.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT (SELECT count(*) FROM usage_events WHERE org_id = %s), "
            "(SELECT count(*) FROM holds WHERE org_id = %s), "
            "(SELECT count(*) FROM ledger_entries WHERE org_id = %s)", (org, org, org))
        row = await cur.fetchone()
    assert row is not None
    return row[0], row[1], row[2], (await ledger.balance(org, now=T0)).available


# -- the rule ---------------------------------------------------------------------------------------------------

def test_the_rule_sorts_and_reads_no_tags_as_none() -> None:
    assert list(check_tags({"result": "ok", "campaign": "spring"}) or {}) == ["campaign", "result"]
    assert check_tags(None) is None and check_tags({}) is None
    assert check_tags({f"k{i}": "v" * 100 for i in range(MAX_TAGS)}) is not None  # the limits themselves pass
    assert check_tags({"a" * 32: "é✓ 中"}) == {"a" * 32: "é✓ 中"}
    assert tag_filter(None) == {} and tag_filter({"country": "FR"}) == {"country": "FR"}


ODD = {"quote": 'say "hi"', "slash": "a\\b/c", "text": "é✓ 中 🙂", "space": " ", "z9_": "x" * 100}


@pytest.mark.parametrize("tags", [None, {}, SPRING, ODD, {f"k{i}": str(i) for i in range(MAX_TAGS)}])
def test_the_ledger_s_json_text_is_the_checked_tags(tags: dict[str, str] | None) -> None:
    text = tags_json(tags)
    assert (None if text is None else json.loads(text)) == check_tags(tags)


BAD_TAGS: list[tuple[object, str]] = [
    ({f"k{i}": "v" for i in range(MAX_TAGS + 1)}, "at most 10 tags"),
    ({"Bad-Key": "v"}, "'Bad-Key'"),
    ({"1st": "v"}, "'1st'"),
    ({"a" * 33: "v"}, "name is 1-32 characters"),
    ({"campaign": "x" * 101}, "1-100 characters, got 101"),
    ({"campaign": ""}, "1-100 characters, got 0"),
    ({"campaign": 7}, "must be a string, got 7"),
    ({"campaign": None}, "must be a string"),
    ({"campaign": "spr\ning"}, "control character"),
    ({"campaign": "spr\x00ing"}, "control character"),
    ({"campaign": "\ud800"}, "control character"),  # a lone surrogate: no UTF-8 for it
    ({1: "v"}, "name"),
    (["campaign", "spring"], "must be a map"),
    ("campaign=spring", "must be a map"),
]


@pytest.mark.parametrize(("tags", "message"), BAD_TAGS)
def test_the_rule_refuses_bad_tags_with_a_clear_message(tags: object, message: str) -> None:
    with pytest.raises(InvalidRequest, match="tag") as err:
        check_tags(tags)
    assert message in str(err.value)
    with pytest.raises(InvalidRequest):
        tag_filter(tags)
    with pytest.raises(InvalidRequest) as same:
        tags_json(tags)
    assert str(same.value) == str(err.value)


# -- stored -----------------------------------------------------------------------------------------------------

async def test_a_debit_stores_its_tags_on_the_fast_and_the_locked_path(ledger: Ledger, new_org: OrgFactory) -> None:
    fast, locked = await new_org("pro"), await new_org("pro")
    await ledger.set_user_limit(locked, "u1", D("100"))  # a user limit: every debit takes the locked path
    for org in (fast, locked):
        await ledger.debit(org, "lead_enrichment", idempotency_key="tagged", user_id="u1", tags=SPRING, now=T0)
        await ledger.debit(org, "lead_enrichment", idempotency_key="plain", user_id="u1", now=T0)
        await ledger.debit(org, "lead_enrichment", idempotency_key="empty", user_id="u1", tags={}, now=T0)
        await ledger.debit(org, "lead_enrichment", idempotency_key="one", user_id="u1", tags={"contact": "c-42"},
                           now=T0)
        assert await usage_tags(ledger, org) == {
            "tagged": SPRING, "plain": None, "empty": None, "one": {"contact": "c-42"}}
        await ledger.debit(org, "lead_enrichment", idempotency_key="odd", user_id="u1", tags=ODD, now=T0)
        assert (await usage_tags(ledger, org))["odd"] == ODD  # quotes, backslashes, any script: as sent
        assert (await ledger.balance(org, now=T0)).available == D(10000 - 5 * 5)
    assert (await ledger.user_limit(locked, "u1", T0)).used == D(25)


async def test_a_committed_hold_s_usage_row_carries_the_hold_s_tags_a_released_one_writes_none(
    ledger: Ledger, new_org: OrgFactory
) -> None:
    org = await new_org("pro")
    await ledger.hold(org, "credit_score", idempotency_key="h1", tags=SPRING, now=T0)
    await ledger.hold(org, "credit_score", idempotency_key="h2", tags={"campaign": "autumn"}, now=T0)
    await ledger.hold(org, "credit_score", idempotency_key="h3", now=T0)
    assert await hold_tags(ledger, org) == {"h1": SPRING, "h2": {"campaign": "autumn"}, "h3": None}
    await ledger.commit(org, "h1", now=T0)
    await ledger.release(org, "h2", now=T0)
    await ledger.commit(org, "h3", now=T0)
    assert await usage_tags(ledger, org) == {"hold:h1": SPRING, "hold:h3": None}  # h2 released: no usage
    async with ledger.holding(org, "credit_score", idempotency_key="h4", tags={"result": "ok"}, now=T0):
        pass
    assert (await usage_tags(ledger, org))["hold:h4"] == {"result": "ok"}
    assert (await ledger.balance(org, now=T0)).available == D(10000 - 3 * 17)  # credit_score: 17 credits


async def test_debits_in_one_batch_statement_keep_each_its_own_tags(grouped: Ledger, new_org: OrgFactory) -> None:
    org, other = await new_org("pro"), await new_org("pro")
    spy = Statements(grouped)
    # The first alone; then 4 of `org` (its locked path, in the batch) and 1 of `other` (alone in the batch:
    # ledger_debit itself, its fast path), in one ledger_debit_batch.
    calls: list[tuple[str, str, dict[str, str] | None]] = [(org, "first", {"n": "0"})]
    calls += [(org, f"k{i}", {"n": str(i), "campaign": "spring"} if i % 2 else None) for i in range(1, 5)]
    calls += [(other, "solo", {"contact": "c-1"})]
    results = await asyncio.gather(*(grouped.debit(o, "lead_enrichment", idempotency_key=k, tags=t, now=T0)
                                     for o, k, t in calls))
    assert len(spy.batches) == 1 and sorted(spy.batches[0]) == sorted([org] * 4 + [other])
    assert all(isinstance(r, DebitResult) and not r.replayed for r in results)
    assert await usage_tags(grouped, org) == {
        "first": {"n": "0"}, "k1": {"n": "1", "campaign": "spring"}, "k2": None,
        "k3": {"n": "3", "campaign": "spring"}, "k4": None}
    assert await usage_tags(grouped, other) == {"solo": {"contact": "c-1"}}
    # Repeats in a batch: the same tags replay, other tags are a conflict, each debit's own answer.
    repeats = await asyncio.gather(
        grouped.debit(other, "lead_enrichment", idempotency_key="x", now=T0),  # alone; the rest wait
        *(grouped.debit(org, "lead_enrichment", idempotency_key=k, tags=t, now=T0) for k, t in [
            ("k1", {"campaign": "spring", "n": "1"}), ("k2", {"n": "2"}), ("k3", None), ("k4", None)]),
        return_exceptions=True)
    assert [type(r).__name__ for r in repeats] == [
        "DebitResult", "DebitResult", "IdempotencyConflict", "IdempotencyConflict", "DebitResult"]
    assert [r.replayed for r in repeats if isinstance(r, DebitResult)] == [False, True, True]
    assert (await grouped.balance(org, now=T0)).available == D(10000 - 5 * 5)


# -- idempotency ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["fast", "locked"])
async def test_a_repeat_with_the_same_tags_replays_with_other_tags_conflicts(
    ledger: Ledger, new_org: OrgFactory, path: str
) -> None:
    org = await new_org("pro")
    if path == "locked":
        await ledger.set_user_limit(org, "*", D("1000"))
    first = await ledger.debit(org, "lead_enrichment", idempotency_key="d", tags=SPRING, now=T0)
    await ledger.debit(org, "lead_enrichment", idempotency_key="bare", now=T0)
    before = await written(ledger, org)
    again = await ledger.debit(org, "lead_enrichment", idempotency_key="d", tags=dict(reversed(SPRING.items())),
                               now=T0)
    assert (again.cost, again.available, again.replayed) == (first.cost, D(10000 - 10), True)
    assert (await ledger.debit(org, "lead_enrichment", idempotency_key="bare", tags={}, now=T0)).replayed
    for key, tags in [("d", {**SPRING, "result": "failed"}), ("d", {"campaign": "spring"}), ("d", None),
                      ("d", {**SPRING, "contact": "c-9"}), ("bare", {"campaign": "spring"})]:
        with pytest.raises(IdempotencyConflict):
            await ledger.debit(org, "lead_enrichment", idempotency_key=key, tags=tags, now=T0)
    assert await written(ledger, org) == before
    assert await usage_tags(ledger, org) == {"d": SPRING, "bare": None}


async def test_a_hold_repeat_with_the_same_tags_replays_with_other_tags_conflicts(
    ledger: Ledger, new_org: OrgFactory
) -> None:
    org = await new_org("pro")
    await ledger.hold(org, "credit_score", idempotency_key="h", tags=SPRING, now=T0)
    before = await written(ledger, org)
    assert (await ledger.hold(org, "credit_score", idempotency_key="h", tags=dict(SPRING), now=T0)).replayed
    for tags in [None, {"campaign": "spring"}, {**SPRING, "country": "DE"}]:
        with pytest.raises(IdempotencyConflict):
            await ledger.hold(org, "credit_score", idempotency_key="h", tags=tags, now=T0)
    assert await written(ledger, org) == before
    await ledger.commit(org, "h", now=T0)
    assert (await ledger.hold(org, "credit_score", idempotency_key="bare", now=T0)).cost == D(17)
    with pytest.raises(IdempotencyConflict):
        await ledger.hold(org, "credit_score", idempotency_key="bare", tags={"result": "ok"}, now=T0)
    assert await hold_tags(ledger, org) == {"h": SPRING, "bare": None}


# -- refused ----------------------------------------------------------------------------------------------------

REFUSED = [
    {f"k{i}": "v" for i in range(MAX_TAGS + 1)},
    {"Bad-Key": "v"},
    {"campaign": "x" * 101},
    {"campaign": 7},
    {"campaign": "spr\ting"},
    {"campaign": "\ud800"},
    ["campaign"],
]


@pytest.mark.parametrize("tags", REFUSED, ids=["11-tags", "bad-key", "101-chars", "not-str", "control",
                                               "surrogate", "not-a-map"])
async def test_bad_tags_are_refused_and_nothing_is_written(
    ledger: Ledger, new_org: OrgFactory, tags: Any
) -> None:
    fast, locked = await new_org("pro"), await new_org("pro")
    await ledger.set_user_limit(locked, "u1", D("100"))
    await ledger.hold(locked, "credit_score", idempotency_key="open", user_id="u1", now=T0)
    for org in (fast, locked):
        before = await written(ledger, org)
        with pytest.raises(InvalidRequest, match="tag"):
            await ledger.debit(org, "lead_enrichment", idempotency_key="d", user_id="u1", tags=tags, now=T0)
        with pytest.raises(InvalidRequest, match="tag"):
            await ledger.hold(org, "credit_score", idempotency_key="h", user_id="u1", tags=tags, now=T0)
        with pytest.raises(InvalidRequest, match="tag"):  # a credit-free action is checked all the same
            await ledger.debit(org, "calendar_sync", idempotency_key="z", tags=tags, now=T0)
        assert await written(ledger, org) == before
    # The same keys with good tags then go through: nothing of the refusals was kept.
    assert not (await ledger.debit(fast, "lead_enrichment", idempotency_key="d", tags=SPRING, now=T0)).replayed


def test_the_refused_characters_are_exactly_unicode_s_control_characters_and_surrogates() -> None:
    expected = [i for i in range(sys.maxunicode + 1) if unicodedata.category(chr(i)) in ("Cc", "Cs")]
    assert expected[-1] < 0x10000  # all in the first plane: the others are checked by a sample
    assert [i for i in range(0x10000) if check_refuses(chr(i))] == expected
    assert not any(check_refuses(chr(i)) for i in range(0x10000, sys.maxunicode + 1, 997))


def check_refuses(char: str) -> bool:
    try:
        check_tags({"value": f"a{char}b"})
    except InvalidRequest:
        return True
    return False
