"""The intake baseline: a bare Starlette handler that reads the body, answers 200.

Run it as ``python bench/baseline_app.py PORT``; it serves on 127.0.0.1 only,
with the same uvicorn defaults as ``syncd run`` (no access log).
"""

from __future__ import annotations

import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


async def webhook(request: Request) -> Response:
    await request.body()
    return JSONResponse({"status": "stored", "events": 1})


app = Starlette(routes=[Route("/webhooks/{provider}", webhook, methods=["POST"])])

if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        log_level="warning",
        access_log=False,
        lifespan="off",
    )
