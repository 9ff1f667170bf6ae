"""What operators see of a worker besides the Temporal UI: Prometheus metrics and log lines that name
the workflow (and so the organization) they are about.

Metrics: one endpoint (BILLING_METRICS_ADDRESS, host:port) serves the Temporal SDK's own metrics and the
engine's counters, all on the SDK runtime's meter, so nothing else runs a server:
- `billing_charges` by `purpose` and `outcome` (succeeded, replayed, declined);
- `billing_invoices_open` by `purpose` and `outcome` (issued, replayed): invoices issued on invoice terms;
- `billing_notifications_failed` by `template`: emails the SMTP server refused for good (recorded on
  their outbox row);
- `billing_incidents` by `step`: a subscription's due step that failed for good (counted by the workflow,
  on its replay-safe meter).
Inside an activity the counter carries the SDK's activity attributes (workflow type, task queue).
"""

from __future__ import annotations

import logging

from temporalio import activity
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

DESCRIPTIONS = {
    "billing_charges": "Stripe charges by purpose and outcome (succeeded, replayed, declined)",
    "billing_invoices_open": "Invoices issued open on invoice payment terms, by purpose and outcome (issued, replayed)",
    "billing_notifications_failed": "Emails the SMTP server refused for good (recorded on their outbox row)",
    "billing_incidents": "Subscription steps that failed for good: recorded, shown, retried on a backoff",
}


def install_metrics(address: str | None) -> None:
    """Serve Prometheus metrics on `address` (None: none) from every Temporal client this process makes
    afterwards: the SDK's runtime is process-wide, so call this before connecting anything."""
    if address:
        Runtime.set_default(Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=address))),
                            error_if_already_set=True)
        for name in DESCRIPTIONS:  # exported from the start, at 0, so dashboards and alerts see them
            Runtime.default().metric_meter.create_counter(name, DESCRIPTIONS[name]).add(0)


def count(name: str, **attributes: str) -> None:
    """Add 1 to the counter `name` (one of DESCRIPTIONS)."""
    meter = activity.metric_meter() if activity.in_activity() else Runtime.default().metric_meter
    meter.create_counter(name, DESCRIPTIONS[name]).add(1, attributes)


class WorkflowContext(logging.Filter):
    """Gives every log record `billing`: " [workflow=subscription:acme activity=stripe.charge]" when it is
    logged inside an activity (the adapters' lines too), else "" (the workflow id names the organization)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if activity.in_activity():
            info = activity.info()
            record.billing = f" [workflow={info.workflow_id} activity={info.activity_type}]"
        else:
            record.billing = ""
        return True


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(billing)s"


def configure_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format=LOG_FORMAT)
    for handler in logging.getLogger().handlers:
        handler.addFilter(WorkflowContext())
