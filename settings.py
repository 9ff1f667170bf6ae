"""Settings from the environment, each with the embedded development default when unset (docs/architecture.md)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent
# The embedded development stack's fixed addresses (stack/services.py), so an operator knows where to look.
LOCALSTRIPE_PORT = 8420
SMTP_SINK_PORT = 8025
DEV_STRIPE_URL = f"http://127.0.0.1:{LOCALSTRIPE_PORT}"


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


_TRUE = {"1", "true", "yes", "on"}


class InvalidSetting(ValueError):
    """A setting whose value cannot be right: the process refuses to start instead of guessing."""


def _positive_int(variable: str, value: object, unit: str) -> int:
    """A setting that is a positive whole number (a string from the environment, or an int), else InvalidSetting."""
    number: object = value
    if isinstance(value, str):
        try:
            number = int(value.strip(), 10)
        except ValueError:
            number = None
    if isinstance(number, bool) or not isinstance(number, int) or number < 1:
        raise InvalidSetting(f"{variable} must be a positive whole number of {unit}, got {value!r}")
    return number


def check_stripe_max_rps(value: object) -> int | None:
    """BILLING_STRIPE_MAX_RPS: None (no ceiling) or a positive whole number of Stripe requests per second."""
    if value is None:
        return None
    return _positive_int("BILLING_STRIPE_MAX_RPS", value, "Stripe requests per second (or unset: no ceiling)")


@dataclass(frozen=True)
class Settings:
    """Where each part is. An unset part is an error, except in development mode (`dev_mode`, set by the
    main command `python3 tasks.py run` and BILLING_DEV_MODE=1), where the embedded stack fills it in:
    no fake Stripe, SMTP sink, embedded PostgreSQL or dev Temporal ever starts because a variable is empty."""

    database_url: str | None = None      # dev mode: embedded PostgreSQL under data_dir/postgres
    temporal_address: str | None = None  # dev mode: embedded dev server
    temporal_namespace: str = "default"
    task_queue: str = "billing"
    stripe_api_key: str | None = None    # dev mode: localstripe on loopback
    smtp_url: str | None = None          # dev mode: local SMTP sink writing data_dir/mail/*.eml
    data_dir: Path = field(default_factory=lambda: ROOT / ".data")
    db_pool_size: int = 10
    hold_ttl_seconds: int = 900
    dev_mode: bool = False
    metrics_address: str | None = None   # host:port of the worker's Prometheus endpoint; None: no metrics
    payload_keys: str | None = None      # BILLING_PAYLOAD_KEYS: seal billing contacts in history (temporal_client.py)
    stripe_max_rps: int | None = None    # fleet-wide ceiling on Stripe requests/s (payments/ceiling.py); None: none
    api_address: str = "127.0.0.1:8480"  # host:port the HTTP API listens on (`billing serve`, the main command)
    # BILLING_WEBHOOK_DISABLE_AFTER_HOURS: a webhook endpoint failing this long is disabled, its owner emailed
    webhook_disable_after_hours: int = 72

    def __post_init__(self) -> None:
        check_stripe_max_rps(self.stripe_max_rps)
        check_webhook_disable_after(self.webhook_disable_after_hours)
        self.api_host_port()

    def api_host_port(self) -> tuple[str, int]:
        host, sep, port = self.api_address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise InvalidSetting(f"BILLING_API_ADDRESS is host:port, such as 0.0.0.0:8480, got {self.api_address!r}")
        return host, int(port)

    def unset_parts(self) -> list[str]:
        """The variables of the parts left unconfigured (the embedded stack's to fill, in dev mode only)."""
        parts = {"DATABASE_URL": self.database_url, "TEMPORAL_ADDRESS": self.temporal_address,
                 "STRIPE_API_KEY": self.stripe_api_key, "SMTP_URL": self.smtp_url}
        return [name for name, value in parts.items() if not value]

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            database_url=_env("DATABASE_URL"),
            temporal_address=_env("TEMPORAL_ADDRESS"),
            temporal_namespace=_env("TEMPORAL_NAMESPACE") or "default",
            task_queue=_env("BILLING_TASK_QUEUE") or "billing",
            stripe_api_key=_env("STRIPE_API_KEY"),
            smtp_url=_env("SMTP_URL"),
            data_dir=Path(_env("BILLING_DATA_DIR") or ROOT / ".data"),
            db_pool_size=int(_env("BILLING_DB_POOL_SIZE") or 10),
            hold_ttl_seconds=int(_env("BILLING_HOLD_TTL_SECONDS") or 900),
            dev_mode=(_env("BILLING_DEV_MODE") or "").lower() in _TRUE,
            metrics_address=_env("BILLING_METRICS_ADDRESS"),
            payload_keys=_env("BILLING_PAYLOAD_KEYS"),
            stripe_max_rps=check_stripe_max_rps(_env("BILLING_STRIPE_MAX_RPS")),
            api_address=_env("BILLING_API_ADDRESS") or "127.0.0.1:8480",
            webhook_disable_after_hours=check_webhook_disable_after(_env("BILLING_WEBHOOK_DISABLE_AFTER_HOURS") or 72),
        )


def check_webhook_disable_after(value: object) -> int:
    """BILLING_WEBHOOK_DISABLE_AFTER_HOURS: a positive whole number of hours (default 72)."""
    return _positive_int("BILLING_WEBHOOK_DISABLE_AFTER_HOURS", value, "hours")
