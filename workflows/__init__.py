"""Temporal workflows only: deterministic, stdlib + temporalio + plain dataclasses. No I/O here."""

from workflows.auto_recharge import AutoRechargeWorkflow
from workflows.pack_purchase import PackPurchaseWorkflow
from workflows.subscription import SubscriptionWorkflow

ALL_WORKFLOWS: list[type] = [SubscriptionWorkflow, PackPurchaseWorkflow, AutoRechargeWorkflow]
