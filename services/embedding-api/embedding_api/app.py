"""The embedding-api's HTTP interface."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    Counter,
    Histogram,
    Info,
    generate_latest,
)
from pydantic import BaseModel

from embedding_api.backends import Encoder
from embedding_api.settings import EmbeddingApiSettings

REQUESTS = Counter(
    "vecsync_embedding_requests_total", "Requests answered, by endpoint and status.", ["endpoint", "status"]
)
REQUEST_DURATION = Histogram(
    "vecsync_embedding_request_duration_seconds",
    "Time to answer a request.",
    ["endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
TEXTS = Counter("vecsync_embedding_texts_total", "Texts encoded.")
MODEL_BATCH_SIZE = Histogram(
    "vecsync_embedding_model_batch_size", "Texts per model call.", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
)
MODEL_INFO = Info("vecsync_embedding_model", "The model and backend in use.")


class EncodeRequest(BaseModel):
    text: str


class EncodeBatchRequest(BaseModel):
    texts: list[str]


def create_app(settings: EmbeddingApiSettings, encoder: Encoder) -> FastAPI:
    app = FastAPI(title="vecsync embedding-api")
    # One model call at a time: the model already uses every core, and this keeps
    # the event loop (and so /healthz and /metrics) free while it works.
    model_lock = asyncio.Lock()
    MODEL_INFO.info(
        {"model": encoder.name, "backend": encoder.backend, "device": encoder.device, "dim": str(encoder.dim)}
    )

    async def encode(texts: list[str]) -> list[list[float]]:
        _check_limits(texts, settings)
        async with model_lock:
            vectors = await run_in_threadpool(encoder.encode, texts)
        MODEL_BATCH_SIZE.observe(len(texts))
        TEXTS.inc(len(texts))
        return vectors

    @app.middleware("http")
    async def measure(request: Request, call_next: Any) -> Response:
        started = time.perf_counter()
        response: Response = await call_next(request)
        endpoint = request.url.path
        if endpoint not in ("/metrics", "/healthz", "/readyz"):
            REQUESTS.labels(endpoint, str(response.status_code)).inc()
            REQUEST_DURATION.labels(endpoint).observe(time.perf_counter() - started)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return JSONResponse(status_code=422, content={"detail": f"Invalid request: {problems}"})

    @app.post("/encode")
    async def encode_one(request: EncodeRequest) -> dict[str, Any]:
        return {"embedding": (await encode([request.text]))[0]}

    @app.post("/encode_batch")
    async def encode_batch(request: EncodeBatchRequest) -> dict[str, Any]:
        return {"embeddings": await encode(request.texts), "model": encoder.name, "dim": encoder.dim}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> dict[str, Any]:
        return {"status": "ready", "model": encoder.name, "backend": encoder.backend, "dim": encoder.dim}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


def _check_limits(texts: list[str], settings: EmbeddingApiSettings) -> None:
    if not texts:
        raise HTTPException(422, "Send at least one text.")
    if len(texts) > settings.max_texts_per_request:
        raise HTTPException(
            413,
            f"{len(texts)} texts in one request; the limit is MAX_TEXTS_PER_REQUEST={settings.max_texts_per_request}.",
        )
    for index, text in enumerate(texts):
        if not text.strip():
            raise HTTPException(422, f"Text {index} is empty; send non-empty strings only.")
        if len(text) > settings.max_chars_per_text:
            raise HTTPException(
                413,
                f"Text {index} has {len(text)} characters; "
                f"the limit is MAX_CHARS_PER_TEXT={settings.max_chars_per_text}.",
            )
