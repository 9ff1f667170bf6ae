"""Quotas as catalog data (models/catalog.py Plan.quotas, models/quota_types.py): the default catalog's numbers,
validated at load (a name like an action's, an exact limit above 0, an explicit hard flag), and the pure rules."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from models.catalog import CATALOG, DEFAULT_CATALOG, Quota, load_catalog
from models.errors import InvalidRequest
from models.quota_types import QuotaUsage, crossed, percent_of, quota_usage
from tests.conftest import T0

D = Decimal


def test_the_default_catalog_s_quotas() -> None:
    assert {n: {q: (v.limit, v.hard) for q, v in p.quotas.items()} for n, p in CATALOG.plans.items()} == {
        "free": {"sessions": (D(100), True), "events": (D(1000), True), "enrichments": (D(10), True),
                 "storage": (D("0.5"), True)},
        "starter": {"sessions": (D(5000), False), "events": (D(100000), True), "enrichments": (D(500), True),
                    "storage": (D(10), True)},
        "pro": {"sessions": (D(25000), False), "events": (D(1000000), True), "enrichments": (D(5000), True),
                "storage": (D(100), False)},
        "enterprise": {"events": (D(10000000), False), "storage": (D(1000), False)},
    }
    assert CATALOG.quota_names == ("sessions", "events", "enrichments", "storage")
    assert CATALOG.version == 1
    assert CATALOG.check_quota("storage") == "storage"
    with pytest.raises(InvalidRequest, match="unknown quota 'seats'; known quotas: sessions, events"):
        CATALOG.check_quota("seats")


@pytest.mark.parametrize(("quota_line", "message"), [
    ('sessions = { limit = "0", hard = true }', "above 0"),
    ('sessions = { limit = "-5", hard = true }', "above 0"),
    ('sessions = { limit = "1.0005", hard = true }', "at most 3 decimal places"),
    ('sessions = { limit = 1.5, hard = true }', "an int or a Decimal"),
    ('sessions = { limit = "many", hard = true }', "not a number"),
    ('sessions = { limit = "NaN", hard = true }', "above 0"),
    ('sessions = { limit = "100" }', "hard"),
    ('sessions = { limit = "100", hard = "yes" }', "hard"),
    ('sessions = { limit = "100", hard = true, per = "day" }', "per"),
    ('Sessions = { limit = "100", hard = true }', "a quota's name is lowercase"),
    ('"ses:sions" = { limit = "100", hard = true }', "a quota's name is lowercase"),
])
def test_a_bad_quota_is_refused_at_load(tmp_path: Path, quota_line: str, message: str) -> None:
    text = DEFAULT_CATALOG.read_text()
    good = 'sessions = { limit = "100", hard = true }'
    assert good in text
    bad = tmp_path / "catalog.toml"
    bad.write_text(text.replace(good, quota_line, 1))
    with pytest.raises(InvalidRequest, match=message):
        load_catalog(bad)


def test_an_integer_limit_is_exact_and_a_revision_keeps_quotas() -> None:
    assert Quota.model_validate({"limit": 250, "hard": False}).limit == D(250)
    v2 = CATALOG.revised(version=2, plans={"pro": {"quotas": {"sessions": {"limit": "30000", "hard": False}}}})
    assert v2.plans["pro"].quotas["sessions"].limit == D(30000)
    assert v2.plans["pro"].quotas["events"] == CATALOG.plans["pro"].quotas["events"]
    assert v2.plans["starter"].quotas == CATALOG.plans["starter"].quotas
    with pytest.raises(InvalidRequest, match="above 0"):
        CATALOG.revised(version=2, plans={"pro": {"quotas": {"sessions": {"limit": "0", "hard": False}}}})


def test_percent_warning_and_crossings() -> None:
    assert quota_usage("s", D("3999"), D(5000), False, T0) == QuotaUsage("s", D("3999"), D(5000), False, 79, False,
                                                                         False, T0)
    assert quota_usage("s", D("4000"), D(5000), True, T0).warning
    assert quota_usage("s", D("5500"), D(5000), False, T0).percent == 110
    assert quota_usage("s", D("5"), None, True, T0) == QuotaUsage("s", D(5), None, False, None, False, False, T0)
    assert percent_of(D("0.4"), D("0.5")) == 80
    assert crossed(D("3999"), D("4000"), D(5000), 80) and not crossed(D("4000"), D("4001"), D(5000), 80)
    assert crossed(D("0"), D("6000"), D(5000), 100) and not crossed(D("5000"), D("5001"), D(5000), 100)
