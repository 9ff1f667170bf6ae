"""Serve the sample app: `python -m examples.credits_app [port]`.

With BILLING_API_URL and BILLING_API_KEY set it meters through the billing HTTP API (ApiMeter, an admin or
platform key); otherwise in-process through the ledger (LedgerMeter over BillingClient.connect(), which reads
DATABASE_URL and the rest of the environment, as the SDK does).
"""

from __future__ import annotations

import asyncio
import os
import sys

from api.middleware import ApiMeter, LedgerMeter
from api.server import serving
from examples.credits_app.app import create_app
from starter import BillingClient


async def main(port: int) -> None:
    api_url, api_key = os.environ.get("BILLING_API_URL"), os.environ.get("BILLING_API_KEY")
    if api_url and api_key:
        async with ApiMeter(api_url, api_key) as meter, serving(create_app(meter), port=port) as url:
            print(f"sample app on {url}, metered through {api_url}", flush=True)
            await asyncio.Event().wait()
    else:
        async with await BillingClient.connect() as billing, serving(create_app(LedgerMeter(billing)),
                                                                     port=port) as url:
            print(f"sample app on {url}, metered in-process", flush=True)
            await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 8490))
