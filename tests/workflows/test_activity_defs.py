"""Each activity is declared once (workflows/activity_defs.py) and implemented once, with the declared
argument and result types (activities/)."""

from __future__ import annotations

import inspect
import typing
from typing import Any

from temporalio import activity

from activities.auto_recharge import AutoRechargeActivities
from activities.email import EmailActivities
from activities.ledger import LedgerActivities
from activities.payments import PaymentActivities
from activities.webhooks import IncidentActivities
from workflows.activity_defs import ALL


def _implementations() -> list[Any]:
    classes = (LedgerActivities, AutoRechargeActivities, PaymentActivities, EmailActivities, IncidentActivities)
    return [fn for cls in classes for _, fn in inspect.getmembers(cls, inspect.isfunction)
            if activity._Definition.from_callable(fn) is not None]


def test_every_declaration_has_exactly_one_implementation_of_its_types() -> None:
    impls = {str(activity._Definition.must_from_callable(fn).name): fn for fn in _implementations()}
    assert len(impls) == len(_implementations()), "two implementations share a name"
    assert sorted(impls) == sorted(d.name for d in ALL)
    for decl in ALL:
        hints = typing.get_type_hints(inspect.unwrap(impls[decl.name]))
        params = [h for name, h in hints.items() if name != "return"]
        assert params == [decl.arg], decl.name
        assert hints["return"] == decl.result, decl.name


def test_names_are_unique() -> None:
    assert len({d.name for d in ALL}) == len(ALL)


def test_a_local_deadline_is_the_attempts_that_fit_in_it() -> None:
    from datetime import timedelta

    from workflows.activity_defs import attempts_within
    # Backoff 1, 2, 4, 8, 16 s fit in a minute (31 s); the next, 32 s, would not: 6 attempts.
    assert attempts_within(timedelta(minutes=1)) == 6
    assert attempts_within(timedelta(minutes=2)) == 7          # + 60 s (the maximum interval)
    assert attempts_within(timedelta(minutes=10)) == 15
    assert attempts_within(timedelta(0)) == 1                  # always one attempt
