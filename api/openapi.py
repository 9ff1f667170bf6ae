"""The OpenAPI 3.1 spec of the API: what each route answers when it refuses, and the committed copy.

    .venv/bin/python -m api.openapi > docs/openapi.json

Routes name the errors they may answer (`problems("InsufficientCredits", ...)`); the status of each comes from
api/problems.py, the one place it is said, so the spec cannot disagree with the answers. tests/api/test_openapi.py
fails when docs/openapi.json differs from what the code serves.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api.problems import PROBLEM_JSON, STATUS
from api.schemas import Problem
from models.errors import ERRORS

REGENERATE = ".venv/bin/python -m api.openapi > docs/openapi.json"
_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
# What every authenticated route may answer: no key (401), a request that does not parse (422), a part of the
# engine away (503).
ALWAYS = ("NotAuthenticated", "InvalidRequest", "ServiceUnavailable")
# Problems that are not BillingErrors: the router's own (an unknown path or id: 404) and the Idempotency-Key
# layer's (api/idempotency.py answers IdempotencyConflict itself).
_OTHER_STATUS = {"NotFound": 404}


def status_of_name(name: str) -> int:
    if name in _OTHER_STATUS:
        return _OTHER_STATUS[name]
    cls = ERRORS[name]  # KeyError: a route names an error that does not exist
    return next(status for base, status in STATUS if issubclass(cls, base))


def problems(*names: str) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route that may refuse with the errors `names` (plus ALWAYS), grouped by status."""
    by_status: dict[int, list[str]] = {}
    for name in dict.fromkeys((*names, *ALWAYS)):
        by_status.setdefault(status_of_name(name), []).append(name)
    return {status: {"description": ", ".join(sorted(found)),
                     "content": {PROBLEM_JSON: {"schema": _PROBLEM_REF}}}
            for status, found in sorted(by_status.items())}


def install(app: FastAPI) -> None:
    """Serve the spec with the Problem schema the routes' refusals point to."""

    def spec() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, openapi_version=app.openapi_version,
                                 description=app.description, routes=app.routes)
            schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = \
                Problem.model_json_schema(ref_template="#/components/schemas/{model}")
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = spec  # type: ignore[method-assign]


def render(spec: dict[str, Any]) -> str:
    return json.dumps(spec, indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    from api.app import build_app  # here: api.app imports this module

    sys.stdout.write(render(build_app().openapi()))


if __name__ == "__main__":
    main()
