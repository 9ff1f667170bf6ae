"""Reads: usage, the ledger's transactions, invoices (docs/api.md).

A member key reads only its own usage: grouped by user, the one row of its user (grouped by action or tier it is
refused, 403: those totals are the whole organization's). Transactions and invoices are an admin's."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Header, Query
from starlette.exceptions import HTTPException

from api.openapi import problems
from api.routes.common import MANAGE, OrgId, managing
from api.schemas import (
    InvoiceDocumentOut,
    InvoiceOut,
    InvoicePaidIn,
    InvoicesOut,
    TransactionOut,
    TransactionsOut,
    UsageOut,
)
from api.service import Caller, Svc
from models.errors import Forbidden
from models.ledger_types import UsageGrouping

router = APIRouter(prefix="/v1/orgs/{org_id}", tags=["reads"])

Since = Annotated[datetime | None, Query(description="from this time on (RFC 3339 with its offset)")]
Until = Annotated[datetime | None, Query(description="before this time (RFC 3339 with its offset)")]


@router.get("/usage", response_model=UsageOut, responses=problems(*MANAGE))
async def usage(org_id: OrgId, key: Caller, svc: Svc, by: UsageGrouping = "action", since: Since = None,
                until: Until = None) -> UsageOut:
    """Uses, quantity and credits grouped by action, tier or user, over [since, until). A member key: by user
    only, its own row."""
    key.reach(org_id)
    if key.role == "member" and by != "user":
        raise Forbidden("a member key reads only its own usage: by=user")
    rows = await svc.billing.usage(org_id, by=by, since=since, until=until)
    if key.role == "member":
        rows = [r for r in rows if r.key == key.user_id]
    return UsageOut.model_validate({"org_id": org_id, "by": by, "since": since, "until": until, "rows": rows},
                                   from_attributes=True)


@router.get("/transactions", response_model=TransactionsOut, responses=problems(*MANAGE))
async def transactions(org_id: OrgId, key: Caller, svc: Svc, since: Since = None,
                       until: Until = None) -> TransactionsOut:
    """The ledger entries over [since, until), oldest first: grants, debits, expiries, holds and releases."""
    managing(key, org_id)
    rows = await svc.billing.transactions(org_id, since=since, until=until)
    return TransactionsOut(org_id=org_id, transactions=[TransactionOut.model_validate(t) for t in rows])


@router.get("/invoices", response_model=InvoicesOut, responses=problems(*MANAGE))
async def invoices(org_id: OrgId, key: Caller, svc: Svc) -> InvoicesOut:
    """Every invoice, oldest first, without its rendered document (GET .../invoices/{number} has it)."""
    managing(key, org_id)
    await svc.billing.balance(org_id)  # an organization that does not exist is 404, not an empty list
    return InvoicesOut(org_id=org_id, invoices=[InvoiceOut.model_validate(i) for i in
                                                await svc.billing.invoices(org_id)])


@router.get("/invoices/{number}", response_model=InvoiceDocumentOut, responses=problems(*MANAGE, "NotFound"))
async def invoice(org_id: OrgId, number: str, key: Caller, svc: Svc) -> InvoiceDocumentOut:
    """One invoice with its rendered HTML document."""
    managing(key, org_id)
    await svc.billing.balance(org_id)
    for i in await svc.billing.invoices(org_id):
        if i.number == number:
            return InvoiceDocumentOut.model_validate(i)
    raise HTTPException(404, f"{org_id} has no invoice {number!r}")


@router.post("/invoices/{number}/paid", response_model=InvoiceOut,
             responses=problems(*MANAGE, "UnknownInvoice", "InvalidRequest"))
async def invoice_paid(org_id: OrgId, number: str, body: InvoicePaidIn, key: Caller, svc: Svc) -> InvoiceOut:
    """Record the payment of an open invoice (invoice payment terms: the transfer arrived). Platform keys only: an
    operator reconciles payments, never the organization itself. A repeat answers as the first."""
    key.reach(org_id)
    key.require("platform")
    return InvoiceOut.model_validate(await svc.billing.mark_invoice_paid(org_id, number, reference=body.reference))


PayKey = Annotated[str | None, Header(
    alias="Idempotency-Key", examples=["pay-inv-42-1"], description="this payment attempt's key: a repeat answers "
    "as the first (paid, or declined again) and charges nothing again; none: a new attempt")]


@router.post("/invoices/{number}/pay", response_model=InvoiceOut,
             responses=problems(*MANAGE, "UnknownInvoice", "InvalidRequest", "PaymentDeclined",
                                "PaymentProviderRefused"))
async def pay_invoice(org_id: OrgId, number: str, key: Caller, svc: Svc, idempotency_key: PayKey = None) -> InvoiceOut:
    """Pay an open invoice with the organization's card now: one charge per Idempotency-Key (none: a new attempt);
    402 PaymentDeclined leaves it open, and another attempt may follow with another card."""
    managing(key, org_id)
    return InvoiceOut.model_validate(await svc.billing.pay_invoice(org_id, number, idempotency_key=idempotency_key))
