"""The baseline for the Serve overhead ratio: the same registry classifier behind plain FastAPI
and uvicorn in one process, no Ray, no batching, no auth.

    python -m benchmarks.plain_classifier ROOT PORT
"""

from __future__ import annotations

import asyncio
import sys

import pandas as pd
import uvicorn
from fastapi import FastAPI

from serve_apps.classifier import answer
from serve_apps.schemas import ClassifyRequest
from slipway.models.scoring import predict_proba
from slipway.registry import Registry
from slipway.storage import Storage


def make_app(root: str) -> FastAPI:
    """One route, /v1/classify, answering as the Serve app does."""
    model, mv = Registry(Storage(root)).load("article_topic", "champion")
    app = FastAPI()

    @app.post("/v1/classify")
    async def classify(body: ClassifyRequest) -> dict:
        proba = await asyncio.to_thread(predict_proba, model, mv, pd.DataFrame({"text":
                                                                                body.texts}))
        return answer(mv, proba)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    return app


if __name__ == "__main__":
    uvicorn.run(make_app(sys.argv[1]), host="127.0.0.1", port=int(sys.argv[2]),
                log_level="warning")
