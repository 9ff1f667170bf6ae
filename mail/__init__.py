"""The email adapter: jinja2 templates, the outbox on PostgreSQL, SMTP delivery; the alert sender."""
