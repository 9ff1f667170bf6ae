"""The `/v1` routers, one module per area; api/app.py includes each in ROUTERS."""
