"""The overage.invoiced webhook event: a trigger on overage_closes (see 0010_overage_event.sql).

Revision ID: 0010
Revises: 0009
"""

from migrations.sql_script import sql_revision

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

upgrade, downgrade = sql_revision(
    __file__,
    "DROP TRIGGER IF EXISTS overage_closes_event ON overage_closes",
    "DROP FUNCTION IF EXISTS events_from_overage_close()",
)
