"""Sending an email as a Temporal activity, over the mail adapter (mail/mailer.py)."""

from __future__ import annotations

from temporalio import activity

from mail.mailer import Mailer
from models.billing_types import EmailResult, SendEmail
from telemetry import count
from workflows.activity_defs import SEND_EMAIL


class EmailActivities:
    def __init__(self, mailer: Mailer) -> None:
        self.mailer = mailer

    @activity.defn(name=SEND_EMAIL.name)
    async def send(self, req: SendEmail) -> EmailResult:
        result = await self.mailer.send(req)
        if result.failed:
            count("billing_notifications_failed", template=req.template)
        return result

    def all(self) -> list[object]:
        return [self.send]
