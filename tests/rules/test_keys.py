"""Business keys and workflow ids never collide across tenants (models/keys.py)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.checks import check_id, check_key
from models.errors import InvalidRequest
from models.keys import (
    open_wallet_key,
    pack_key,
    pack_workflow_id,
    period_key,
    recharge_key,
    recharge_workflow_id,
    step_key,
    subscription_workflow_id,
)

# Ids as check_id allows them, with ':' (and the look-alike '%3A' impossible: '%' is refused) likely.
ids = st.text(alphabet="ab:1_.@/+-", min_size=1, max_size=8).filter(lambda s: s[0] not in ":_.@/+-")
times = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2040, 1, 1), timezones=st.just(UTC)).map(
    lambda t: t.replace(microsecond=0))
purposes = st.sampled_from(["renewal", "credits", "trial", "free", "trial-ending", "upgrade-1", "seats-2",
                            "retry-1", "auto_recharge_limit", "auto_recharge:1", "auto_recharge:12"])
steps = st.sampled_from(["receipt", "failed", "email"])

base_keys = st.one_of(
    st.tuples(st.just("period"), ids, times, purposes),
    st.tuples(st.just("recharge"), ids, times, st.integers(1, 20)),
    st.tuples(st.just("pack"), ids, ids),
    st.tuples(st.just("open"), ids, st.sampled_from(["free", "pro"])),
)
specs = st.one_of(base_keys.map(lambda b: (b, None)), st.tuples(base_keys, steps))


def build(spec: tuple[Any, str | None]) -> str:
    (kind, *args), step = spec
    makers: dict[str, Callable[..., str]] = {
        "period": period_key, "recharge": recharge_key, "pack": pack_key, "open": open_wallet_key}
    key = makers[kind](*args)
    return key if step is None else step_key(key, step)


def canonical(spec: tuple[Any, str | None]) -> tuple[Any, ...]:
    """A recharge key is, by definition, the period key of purpose auto_recharge:n."""
    (kind, *args), step = spec
    if kind == "recharge":
        org, at, n = args
        return ("period", org, at, f"auto_recharge:{n}", step)
    return (kind, *args, step)


@settings(max_examples=2000)
@given(specs, specs)
def test_different_effects_never_share_a_business_key(a: tuple[Any, str | None], b: tuple[Any, str | None]) -> None:
    if canonical(a) != canonical(b):
        assert build(a) != build(b)
    else:
        assert build(a) == build(b)


workflow_specs = st.one_of(
    st.tuples(st.just("subscription"), ids), st.tuples(st.just("recharge"), ids), st.tuples(st.just("pack"), ids, ids))


@settings(max_examples=2000)
@given(workflow_specs, workflow_specs)
def test_different_workflows_never_share_an_id(a: tuple[str, ...], b: tuple[str, ...]) -> None:
    make: dict[str, Callable[..., str]] = {
        "subscription": subscription_workflow_id, "recharge": recharge_workflow_id, "pack": pack_workflow_id}
    assert (make[a[0]](*a[1:]) == make[b[0]](*b[1:])) == (a == b)


def test_the_example_that_collided_no_longer_does() -> None:
    # Joined with ':' as before, org "a" with key "b:c" and org "a:b" with key "c" were one workflow.
    assert pack_workflow_id("a", "b:c") != pack_workflow_id("a:b", "c")
    assert pack_key("a", "b:c") != pack_key("a:b", "c")


def test_ids_without_a_colon_keep_the_keys_already_in_use() -> None:
    at = datetime(2026, 1, 15, 9, 30, tzinfo=UTC)
    assert period_key("acme", at, "renewal") == "acme:2026-01-15T09:30:00Z:renewal"
    assert recharge_key("acme", at, 2) == "acme:2026-01-15T09:30:00Z:auto_recharge:2"
    assert pack_key("acme", "order-17") == "acme:pack:order-17"
    assert step_key(pack_key("acme", "order-17"), "receipt") == "acme:pack:order-17:receipt"
    assert (subscription_workflow_id("acme"), recharge_workflow_id("acme"), pack_workflow_id("acme", "k")) == (
        "subscription:acme", "auto-recharge:acme", "pack:acme:k")


@given(ids)
def test_generated_ids_are_valid_ids(org: str) -> None:
    assert check_id("org_id", org) == org


@given(specs)
def test_every_built_key_passes_the_key_rule(spec: tuple[Any, str | None]) -> None:
    assert check_key("key", build(spec)) == build(spec)


@pytest.mark.parametrize("bad", ["", " ", "a b", ":a", "a\n", "x" * 1501, 7, None])
def test_the_key_rule_refuses_what_no_key_builder_makes(bad: object) -> None:
    with pytest.raises(InvalidRequest, match="business key"):
        check_key("key", bad)


def test_a_time_in_another_zone_names_the_same_instant_in_the_same_key() -> None:
    paris = timezone(timedelta(hours=1))
    at = datetime(2026, 1, 15, 10, 30, tzinfo=paris)  # 09:30 UTC, as a database session in Paris reads it
    assert period_key("acme", at, "renewal") == "acme:2026-01-15T09:30:00Z:renewal"
