"""The HTTP service: API keys and the replay record of POSTs under an Idempotency-Key (see 0006_api.sql).

Revision ID: 0006
Revises: 0005
"""

from migrations.sql_script import sql_revision

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

upgrade, downgrade = sql_revision(__file__, "DROP TABLE IF EXISTS http_idempotency, api_keys",
                                  "DROP FUNCTION IF EXISTS api_keys_revoked_once()")
