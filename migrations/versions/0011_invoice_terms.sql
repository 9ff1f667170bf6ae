-- Invoice payment terms (docs/contracts.md): a renewal on `invoice` terms issues an open invoice due `net_days`
-- later instead of charging a card. The engine keeps the open-invoice record itself: localstripe 1.15 refuses
-- Invoice.create's collection_method and days_until_due (400 "Unexpected ..."), so Stripe Invoices with
-- collection_method=send_invoice cannot be exercised here.
--
-- Its payment row is 'invoiced' (billed on terms, awaiting payment) and becomes 'succeeded' when the invoice is
-- paid: by a transfer an operator records (paid_by 'transfer', no PaymentIntent) or later by card.
ALTER TABLE payments DROP CONSTRAINT payments_status_check,
    ADD CONSTRAINT payments_status_check CHECK (status IN ('pending', 'succeeded', 'declined', 'invoiced')),
    ADD COLUMN paid_by text CHECK (paid_by IN ('card', 'transfer')),
    DROP CONSTRAINT payments_check,
    ADD CONSTRAINT payments_check CHECK ((status = 'succeeded' AND paid_by IS DISTINCT FROM 'transfer')
                                         <= (stripe_payment_intent IS NOT NULL));

ALTER TABLE invoices ALTER COLUMN stripe_payment_id DROP NOT NULL,
    ADD COLUMN status text NOT NULL DEFAULT 'paid' CHECK (status IN ('open', 'paid')),
    ADD COLUMN due_at timestamptz,
    ADD COLUMN due_noticed_at timestamptz,      -- the due date came and it was unpaid: invoice.due
    ADD COLUMN overdue_at timestamptz,          -- dunning began: invoice.overdue
    ADD COLUMN paid_at timestamptz,
    ADD COLUMN paid_reference text,             -- the operator's words: "transfer 2026-03-02 ref 4411"
    ADD CONSTRAINT invoices_open_has_due CHECK (status = 'paid' OR due_at IS NOT NULL),
    ADD CONSTRAINT invoices_paid_when CHECK ((status = 'paid') = (paid_at IS NOT NULL OR due_at IS NULL));

-- The issue event says whether it is open and when it is due; the changes of an open invoice are events too.
CREATE OR REPLACE FUNCTION events_from_invoice() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM webhook_event(
        NEW.org_id, 'invoice.issued', NEW.number,
        jsonb_build_object('number', NEW.number, 'payment_key', NEW.payment_key, 'purpose', NEW.purpose,
                           'issued_at', webhook_time(NEW.issued_at), 'currency', NEW.currency, 'lines', NEW.lines,
                           'subtotal_cents', NEW.subtotal_cents, 'tax_rate', NEW.tax_rate::text,
                           'tax_cents', NEW.tax_cents, 'total_cents', NEW.total_cents, 'status', NEW.status,
                           'due_at', webhook_time(NEW.due_at)),
        NEW.issued_at);
    RETURN NULL;
END $$;

CREATE FUNCTION events_from_invoice_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_data jsonb := jsonb_build_object('number', NEW.number, 'payment_key', NEW.payment_key,
                                       'currency', NEW.currency, 'total_cents', NEW.total_cents,
                                       'due_at', webhook_time(NEW.due_at));
BEGIN
    IF OLD.due_noticed_at IS NULL AND NEW.due_noticed_at IS NOT NULL THEN
        PERFORM webhook_event(NEW.org_id, 'invoice.due', NEW.number || ':due', v_data, NEW.due_noticed_at);
    END IF;
    IF OLD.overdue_at IS NULL AND NEW.overdue_at IS NOT NULL THEN
        PERFORM webhook_event(NEW.org_id, 'invoice.overdue', NEW.number || ':overdue', v_data, NEW.overdue_at);
    END IF;
    IF OLD.status = 'open' AND NEW.status = 'paid' THEN
        PERFORM webhook_event(NEW.org_id, 'invoice.paid', NEW.number || ':paid',
                              v_data || jsonb_build_object('paid_at', webhook_time(NEW.paid_at)), NEW.paid_at);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER invoices_change_event AFTER UPDATE ON invoices FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.due_noticed_at IS DISTINCT FROM NEW.due_noticed_at
          OR OLD.overdue_at IS DISTINCT FROM NEW.overdue_at)
    EXECUTE FUNCTION events_from_invoice_change();

CREATE INDEX invoices_open ON invoices (org_id, due_at) WHERE status = 'open';
