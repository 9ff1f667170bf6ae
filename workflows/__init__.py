"""Temporal workflows only: deterministic, stdlib + temporalio + plain dataclasses. No I/O here."""

from workflows.subscription import SubscriptionWorkflow

ALL_WORKFLOWS: list[type] = [SubscriptionWorkflow]  # the auto-recharge workflow joins with packs
