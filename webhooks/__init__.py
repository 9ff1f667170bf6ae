"""Outgoing webhooks (docs/webhooks.md): events written in the transaction of their cause (the triggers of
migrations/versions/0007_webhooks.sql, and `events.record_email_event` for the steps whose record is their
email), the endpoints' store (`store.py`), signed delivery at least once in seq order (`delivery.py`, run by
the WebhookDelivery workflow, one per endpoint) and the dispatcher that starts those workflows
(`dispatcher.py`)."""
