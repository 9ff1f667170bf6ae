"""An organization's contract terms over its plan (docs/api.md, DESIGN.md section 10) and catalog migrations.

Contracts are set by a platform or an admin key (seed 004 keeps credit settings to super admins; a member never
reaches them); moving a grandfathered subscription to another catalog version is an operator's act: platform
keys only. PUT is idempotent by nature (the same terms twice change nothing), so it takes no Idempotency-Key.
"""

from __future__ import annotations

from fastapi import APIRouter

from api.openapi import problems
from api.routes.common import MANAGE, OrgId, managing
from api.schemas import ContractAnswer, ContractIn, ContractOut, MigrateIn, SubscriptionOut
from api.service import Caller, Svc

router = APIRouter(prefix="/v1/orgs/{org_id}", tags=["contracts"])

@router.get("/contract", response_model=ContractAnswer, responses=problems(*MANAGE, "InvalidRequest"))
async def contract(org_id: OrgId, key: Caller, svc: Svc) -> ContractAnswer:
    """The organization's contract terms, if any."""
    managing(key, org_id)
    terms = await svc.billing.contract(org_id)
    return ContractAnswer(org_id=org_id, contract=None if terms is None else ContractOut.model_validate(terms))


@router.put("/contract", response_model=SubscriptionOut, responses=problems(*MANAGE, "InvalidRequest"))
async def set_contract(org_id: OrgId, body: ContractIn, key: Caller, svc: Svc) -> SubscriptionOut:
    """Set the contract: in force at once for overage, the open-hold limit and this period's allocation; seat
    prices from the next charge. The same terms again change nothing."""
    managing(key, org_id)
    return SubscriptionOut.model_validate(await svc.billing.set_contract(org_id, body.terms()))


@router.delete("/contract", response_model=SubscriptionOut, responses=problems(*MANAGE, "InvalidRequest"))
async def end_contract(org_id: OrgId, key: Caller, svc: Svc) -> SubscriptionOut:
    """End the contract now: the plan's own terms apply again (the overage recorded so far is still invoiced
    at the next renewal, at the contract's rate)."""
    managing(key, org_id)
    return SubscriptionOut.model_validate(await svc.billing.set_contract(org_id, None))


@router.post("/subscription/migrate", response_model=SubscriptionOut,
             responses=problems(*MANAGE, "InvalidRequest"))
async def migrate(org_id: OrgId, body: MigrateIn, key: Caller, svc: Svc) -> SubscriptionOut:
    """Move a grandfathered subscription to a catalog version (the current one by default): its next charge is
    priced on it. Platform keys only; refused while a contract locks prices."""
    key.reach(org_id)
    key.require("platform")
    return SubscriptionOut.model_validate(await svc.billing.migrate_catalog(org_id, version=body.version))
