"""Temporal workflows only: deterministic, stdlib + temporalio + plain dataclasses. No I/O here."""

from workflows.auto_recharge import AutoRechargeWorkflow
from workflows.pack_purchase import PackPurchaseWorkflow
from workflows.subscription import SubscriptionWorkflow
from workflows.webhook_delivery import WebhookDeliveryWorkflow

ALL_WORKFLOWS: list[type] = [SubscriptionWorkflow, PackPurchaseWorkflow, AutoRechargeWorkflow, WebhookDeliveryWorkflow]
