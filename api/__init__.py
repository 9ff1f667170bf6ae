"""The HTTP service over BillingClient (docs/api.md): `/v1` endpoints, API keys and roles, the credits
middleware for platform teams' own ASGI apps."""
