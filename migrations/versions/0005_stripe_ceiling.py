"""The fleet-wide ceiling on Stripe requests per second: one counter row per ceiling (see
0005_stripe_ceiling.sql; the function that takes a slot is ledger/sql/stripe_ceiling_take.sql).

Revision ID: 0005
Revises: 0004
"""

from migrations.sql_script import sql_revision

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

upgrade, downgrade = sql_revision(__file__, "DROP TABLE IF EXISTS stripe_ceiling")
