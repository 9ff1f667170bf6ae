"""Invoice payment terms: open invoices with a due date, paid by transfer or card later, and their events (see
0011_invoice_terms.sql).

Revision ID: 0011
Revises: 0010
"""

from migrations.sql_script import sql_revision

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

# events_from_invoice as 0007 made it (the downgrade puts it back).
_EVENTS_FROM_INVOICE_0007 = """CREATE OR REPLACE FUNCTION events_from_invoice() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM webhook_event(
        NEW.org_id, 'invoice.issued', NEW.number,
        jsonb_build_object('number', NEW.number, 'payment_key', NEW.payment_key, 'purpose', NEW.purpose,
                           'issued_at', webhook_time(NEW.issued_at), 'currency', NEW.currency, 'lines', NEW.lines,
                           'subtotal_cents', NEW.subtotal_cents, 'tax_rate', NEW.tax_rate::text,
                           'tax_cents', NEW.tax_cents, 'total_cents', NEW.total_cents),
        NEW.issued_at);
    RETURN NULL;
END $$"""

upgrade, downgrade = sql_revision(
    __file__,
    "DROP TRIGGER IF EXISTS invoices_change_event ON invoices",
    "DROP FUNCTION IF EXISTS events_from_invoice_change()",
    _EVENTS_FROM_INVOICE_0007,
    "DROP INDEX IF EXISTS invoices_open",
    "DELETE FROM invoices WHERE status = 'open' OR stripe_payment_id IS NULL",
    "DELETE FROM payments WHERE status = 'invoiced' OR paid_by = 'transfer'",
    "ALTER TABLE invoices DROP CONSTRAINT IF EXISTS invoices_open_has_due, "
    "DROP CONSTRAINT IF EXISTS invoices_paid_when, DROP COLUMN IF EXISTS status, DROP COLUMN IF EXISTS due_at, "
    "DROP COLUMN IF EXISTS due_noticed_at, DROP COLUMN IF EXISTS overdue_at, DROP COLUMN IF EXISTS paid_at, "
    "DROP COLUMN IF EXISTS paid_reference, ALTER COLUMN stripe_payment_id SET NOT NULL",
    "ALTER TABLE payments DROP CONSTRAINT payments_check, DROP CONSTRAINT payments_status_check, "
    "DROP COLUMN IF EXISTS paid_by, "
    "ADD CONSTRAINT payments_status_check CHECK (status IN ('pending', 'succeeded', 'declined')), "
    "ADD CONSTRAINT payments_check CHECK ((status = 'succeeded') <= (stripe_payment_intent IS NOT NULL))",
)
