"""Temporal workflows only: deterministic, stdlib + temporalio + plain dataclasses. No I/O here."""

ALL_WORKFLOWS: list[type] = []  # the subscription and auto-recharge workflows register here
