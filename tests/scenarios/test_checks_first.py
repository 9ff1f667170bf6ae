"""Checked before the first effect, with the rules the effects apply: a refusal means nothing happened."""

from __future__ import annotations

from decimal import Decimal

import pytest

from models.errors import InvalidRequest
from testkit import TestKit


@pytest.mark.parametrize("trial_days", [0, 14])
async def test_an_address_the_mailer_would_refuse_is_refused_before_any_charge(kit: TestKit, org: str,
                                                                               trial_days: int) -> None:
    # "<ops@acme.test>" passed the subscribe check but not the mailer's: the first charge went through,
    # then the receipt failed. Now one rule refuses it before anything starts.
    with pytest.raises(InvalidRequest, match="not an email address"):
        await kit.billing.subscribe(org, plan="pro", email="<ops@acme.test>", trial_days=trial_days)
    assert kit.charges(org) == []
    with pytest.raises(InvalidRequest, match="no subscription"):
        await kit.billing.subscription(org)
    await kit.settle()


async def test_a_nan_vat_rate_is_a_typed_refusal(kit: TestKit, org: str) -> None:
    with pytest.raises(InvalidRequest, match="fraction"):
        await kit.billing.subscribe(org, plan="pro", email="ops@acme.test", vat_rate=Decimal("NaN"))
    assert kit.charges(org) == []
