"""The embedding-api's HTTP interface: vecsync's own endpoints and an OpenAI-compatible one."""

from __future__ import annotations

import asyncio
import base64
import hmac
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

import numpy as np
import orjson
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from pydantic import BaseModel
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedding_api.backends import Encoder, model_workers
from embedding_api.batching import Batcher, BatchStats, Encoded, ModelUnavailable, NotReady, QueueFull, TextsFailed
from embedding_api.settings import EmbeddingApiSettings

# The embedding-api's own registry: the default one also holds the pipeline stages' families (vecsync.metrics, which
# vecsync.runtime imports), and those would only ever show here without values.
REGISTRY = CollectorRegistry(auto_describe=True)
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_collector)

REQUESTS = Counter(
    "vecsync_embedding_requests_total",
    "Requests answered, by endpoint and status.",
    ["endpoint", "status"],
    registry=REGISTRY,
)
REQUEST_DURATION = Histogram(
    "vecsync_embedding_request_duration_seconds",
    "Time to answer a request.",
    ["endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
TEXTS = Counter("vecsync_embedding_texts_total", "Texts encoded.", registry=REGISTRY)
TRUNCATED = Counter(
    "vecsync_embedding_truncated_texts_total",
    "Texts longer than the model's window, encoded from their beginning.",
    registry=REGISTRY,
)
MODEL_BATCH_SIZE = Histogram(
    "vecsync_embedding_model_batch_size",
    "Texts per model call.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
    registry=REGISTRY,
)
MODEL_BATCH_TOKENS = Histogram(
    "vecsync_embedding_model_batch_tokens",
    "Tokens per model call (after truncation, before padding).",
    buckets=(16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536),
    registry=REGISTRY,
)
MODEL_CALL_DURATION = Histogram(
    "vecsync_embedding_model_call_duration_seconds",
    "Time of one model call.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
FAILED_TEXTS = Counter(
    "vecsync_embedding_failed_texts_total",
    "Texts the model failed on by themselves while it still encoded a known-good text; their requests got 422.",
    registry=REGISTRY,
)
QUEUE_TEXTS = Gauge("vecsync_embedding_queue_texts", "Texts accepted and not yet encoded.", registry=REGISTRY)
MODEL_INFO = Info("vecsync_embedding_model", "The model and backend in use.", registry=REGISTRY)

OPENAI_PREFIX = "/v1/"


# "float": JSON numbers. "base64": each vector as base64 of little-endian float32, as in the OpenAI API:
# a third of the bytes, exact, and no number formatting or parsing on either side.
EncodingFormat = Literal["float", "base64"]


class EncodeRequest(BaseModel):
    text: str
    encoding_format: EncodingFormat = "float"


class EncodeBatchRequest(BaseModel):
    texts: list[str]
    encoding_format: EncodingFormat = "float"


class OpenAIEmbeddingsRequest(BaseModel):
    input: str | list[Any]
    model: str | None = None
    encoding_format: EncodingFormat = "float"
    dimensions: int | None = None
    user: str | None = None


OPEN_PATHS = ("/healthz", "/readyz", "/metrics")


def _authorized(path: str, headers: Headers, api_key: str | None) -> bool:
    """Whether the request may go on: always without a configured key, else only with the right bearer token."""
    if api_key is None or path in OPEN_PATHS:
        return True
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode())


def create_app(
    settings: EmbeddingApiSettings,
    encoder: Encoder | None = None,
    *,
    load: Callable[[], Encoder] | None = None,
    on_load_failure: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """The app over ``encoder`` (ready at once), or over what ``load`` returns (loaded in the background)."""
    if (encoder is None) == (load is None):
        raise ValueError("pass either an encoder or a load function")
    app = FastAPI(title="vecsync embedding-api")
    batcher = Batcher(
        load or (lambda: encoder),  # type: ignore[arg-type, return-value]
        workers=model_workers(settings) if load is not None else 1,
        max_batch_size=settings.max_batch_size,
        max_batch_tokens=settings.max_batch_tokens,
        max_wait_s=settings.max_wait_ms / 1000.0,
        max_queue_texts=settings.max_queue_texts,
        warm_up=load is not None,
        background_load=load is not None,
        on_batch=_observe_batch,
        on_ready=_describe_model,
        on_load_failure=on_load_failure,
        on_failed_texts=FAILED_TEXTS.inc,
    )
    app.state.batcher = batcher
    QUEUE_TEXTS.set_function(lambda: batcher.queued_texts)
    app.router.add_event_handler("shutdown", batcher.close)

    def model() -> Encoder:
        assert batcher.encoder is not None
        return batcher.encoder

    async def embed(texts: list[str]) -> Encoded:
        _check_limits(texts, settings)
        try:
            future = batcher.submit(texts)
        except QueueFull as exc:
            raise HTTPException(
                503,
                f"The embedding queue is full ({batcher.queued_texts} texts waiting, "
                f"MAX_QUEUE_TEXTS={settings.max_queue_texts}); retry in {exc.retry_after_s} s.",
                headers={"Retry-After": str(exc.retry_after_s)},
            ) from None
        except NotReady as exc:
            raise HTTPException(503, f"The model is not ready: {exc}.", headers={"Retry-After": "5"}) from None
        try:
            encoded = await asyncio.wrap_future(future)
        except NotReady as exc:
            raise HTTPException(503, f"The model is not ready: {exc}.", headers={"Retry-After": "5"}) from None
        except ModelUnavailable as exc:
            raise HTTPException(
                503,
                f"The model failed: {exc}. Retry later; if it persists, restart the embedding-api.",
                headers={"Retry-After": "5"},
            ) from None
        except TextsFailed:
            raise  # answered 422 by its handler, naming the texts
        except Exception as exc:  # noqa: BLE001 - the model failed on this batch; the service stays up
            raise HTTPException(500, f"The model failed on this batch: {type(exc).__name__}: {exc}") from None
        TEXTS.inc(len(texts))
        return encoded

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        return _error(request.url.path, 422, f"Invalid request: {_describe_validation(exc)}")

    @app.exception_handler(TextsFailed)
    async def texts_failed(request: Request, exc: TextsFailed) -> Response:
        described = "; ".join(f"text {index} ({error})" for index, error in sorted(exc.errors.items()))
        message = (
            f"The model fails on {described}, each on its own, while it still encodes a known-good text: such a "
            "text fails again whenever it is sent; change it or leave it out."
        )
        failed = [{"index": index, "error": error} for index, error in sorted(exc.errors.items())]
        return _error(request.url.path, 422, message, extra={"failed": failed})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return _error(request.url.path, exc.status_code, str(exc.detail), exc.headers)

    @app.post("/encode")
    async def encode_one(request: EncodeRequest) -> Response:
        encoded = await embed([request.text])
        vector = _vectors(encoded.vectors, request.encoding_format)[0]
        return _json({"embedding": vector, "model": model().name, "truncated": encoded.truncated[0]})

    @app.post("/encode_batch")
    async def encode_batch(request: EncodeBatchRequest) -> Response:
        encoded = await embed(request.texts)
        encoder = model()
        vectors = _vectors(encoded.vectors, request.encoding_format)
        return _json({"embeddings": vectors, "model": encoder.name, "dim": encoder.dim, "truncated": encoded.truncated})

    @app.post("/v1/embeddings")
    async def openai_embeddings(request: OpenAIEmbeddingsRequest) -> Response:
        texts = _openai_texts(request.input)
        encoded = await embed(texts)
        encoder = model()
        if request.dimensions is not None and request.dimensions != encoder.dim:
            raise HTTPException(422, f"dimensions={request.dimensions} is not available; this model has {encoder.dim}.")
        vectors = _vectors(encoded.vectors, request.encoding_format)
        data = [{"object": "embedding", "index": i, "embedding": vector} for i, vector in enumerate(vectors)]
        tokens = sum(encoded.tokens)
        return _json(
            {
                "object": "list",
                "data": data,
                "model": encoder.name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    @app.get("/v1/models")
    async def openai_models() -> dict[str, Any]:
        if not batcher.ready:
            return {"object": "list", "data": []}
        return {"object": "list", "data": [{"id": model().name, "object": "model", "owned_by": "vecsync"}]}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        if batcher.load_error is not None:
            return _json({"status": "failed", "detail": str(batcher.load_error)}, 503)
        if not batcher.ready:
            return _json({"status": "loading"}, 503)
        encoder = model()
        body = {"status": "ready", "model": encoder.name, "backend": encoder.backend, "dim": encoder.dim}
        return _json(body | {"device": encoder.device, "max_tokens": encoder.max_tokens})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    known_paths = frozenset(getattr(route, "path", "") for route in app.routes)
    app.add_middleware(GuardAndMeasure, settings=settings, known_paths=known_paths)
    return app


def _observe_batch(stats: BatchStats) -> None:
    MODEL_BATCH_SIZE.observe(stats.texts)
    MODEL_BATCH_TOKENS.observe(stats.tokens)
    MODEL_CALL_DURATION.observe(stats.seconds)
    if stats.truncated:
        TRUNCATED.inc(stats.truncated)


def _describe_model(encoder: Encoder) -> None:
    MODEL_INFO.info(
        {"model": encoder.name, "backend": encoder.backend, "device": encoder.device, "dim": str(encoder.dim)}
    )


class GuardAndMeasure:
    """Checks the API key and the body size before anything is read, and counts and times every answer.

    Plain ASGI rather than ``@app.middleware("http")``: that wrapper streams each response through extra tasks
    and queues, which measured as a large share of the cost of a single-text request.
    """

    def __init__(self, app: ASGIApp, settings: EmbeddingApiSettings, known_paths: frozenset[str]) -> None:
        self.app = app
        self.settings = settings
        self.known_paths = known_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path: str = scope["path"]
        status = 500  # what the client gets if the app raises before answering

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            rejection = self._rejection(path, Headers(scope=scope))
            if rejection is not None:
                await rejection(scope, receive, send_and_note_status)
            else:
                await self.app(scope, receive, send_and_note_status)
        finally:
            if path not in OPEN_PATHS:
                # Only known routes become label values: probing random paths must not grow the metrics unbounded.
                endpoint = path if path in self.known_paths else "other"
                REQUESTS.labels(endpoint, str(status)).inc()
                REQUEST_DURATION.labels(endpoint).observe(time.perf_counter() - started)

    def _rejection(self, path: str, headers: Headers) -> Response | None:
        if not _authorized(path, headers, self.settings.embedding_api_key):
            message = "Missing or wrong API key: send 'Authorization: Bearer <EMBEDDING_API_KEY>'."
            return _error(path, 401, message, {"WWW-Authenticate": "Bearer"})
        length = headers.get("content-length")
        limit = self.settings.max_request_bytes
        if length and length.isdigit() and int(length) > limit:
            return _error(path, 413, f"The request body has {length} bytes; the limit is MAX_REQUEST_BYTES={limit}.")
        return None


def _error(
    path: str,
    status: int,
    message: str,
    headers: Mapping[str, str] | None = None,
    *,
    extra: Mapping[str, Any] | None = None,
) -> Response:
    """An error in the shape of the route's API; ``extra`` fields go next to the message."""
    if path.startswith(OPENAI_PREFIX):
        kind = "server_error" if status >= 500 else "invalid_request_error"
        error = {"message": message, "type": kind, "param": None, "code": str(status), **(extra or {})}
        body: dict[str, Any] = {"error": error}
    else:
        body = {"detail": message, **(extra or {})}
    return _json(body, status, headers)


def _describe_validation(exc: RequestValidationError) -> str:
    problems = []
    for error in exc.errors():
        if error.get("type") == "json_invalid":
            reason = error.get("ctx", {}).get("error", "")
            problems.append(f"the body is not valid JSON ({reason})" if reason else "the body is not valid JSON")
            continue
        if tuple(error["loc"]) == ("body",):
            problems.append("the body must be a JSON object (with Content-Type: application/json)")
            continue
        location = ".".join(str(part) for part in error["loc"])
        problems.append(f"{location}: {error['msg']}")
    return "; ".join(problems)


def _openai_texts(value: str | list[Any]) -> list[str]:
    texts = [value] if isinstance(value, str) else value
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise HTTPException(
                422, f"input[{index}] is a {type(text).__name__}; send strings (token arrays are not supported)."
            )
    return texts


def _vectors(vectors: np.ndarray, encoding_format: str) -> np.ndarray | list[str]:
    """The rows as they go into the reply: the array itself (orjson writes it), or base64 of each row."""
    if encoding_format == "float":
        return vectors
    rows = np.ascontiguousarray(vectors, dtype="<f4")
    return [base64.b64encode(row.tobytes()).decode("ascii") for row in rows]


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    # orjson writes numpy arrays natively and formats float32 in their shortest form: several times faster than
    # the standard library on a batch of vectors, and the request thread spends that time holding the GIL.
    content = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(content, status_code=status, headers=headers, media_type="application/json")


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
