"""The embedding-api's HTTP interface: vecsync's own endpoints and an OpenAI-compatible one, over every model it
serves (EMBEDDING_MODELS): each request names its model in ``model``, or gets the default one."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from embedding_api.backends import Encoder
from embedding_api.batching import Batcher, Encoded
from embedding_api.chunker import TextChunker, load_chunker
from embedding_api.encoding_errors import ModelUnavailable, NotReady, QueueFull, TextsFailed
from embedding_api.metrics import (
    CHUNKS,
    FAILED_TEXTS,
    QUEUE_TEXTS,
    REGISTRY,
    TEXTS,
    forget_models,
    observe_model_call,
    publish_model_info,
)
from embedding_api.model_pool import ServedModel, models_of_settings, report_memory
from embedding_api.replies import describe_validation_error, error_response, json_response, vectors_in_format
from embedding_api.request_guard import GuardAndMeasure
from embedding_api.served_models import served_models
from embedding_api.settings import EmbeddingApiSettings
from embedding_api.worker_layout import model_workers

# "float": JSON numbers. "base64": each vector as base64 of little-endian float32, as in the OpenAI API:
# a third of the bytes, exact, and no number formatting or parsing on either side.
EncodingFormat = Literal["float", "base64"]


class EncodeRequest(BaseModel):
    text: str
    encoding_format: EncodingFormat = "float"
    # One of the models served (GET /v1/models); absent: the default, the first of EMBEDDING_MODELS.
    model: str | None = None


class EncodeBatchRequest(BaseModel):
    texts: list[str]
    encoding_format: EncodingFormat = "float"
    model: str | None = None


class ChunkRequest(BaseModel):
    texts: list[str]
    model: str | None = None
    # Tokens per chunk, the model's special tokens included; null: the model's window.
    tokens: int | None = None
    overlap: int = Field(default=0, ge=0)


class OpenAIEmbeddingsRequest(BaseModel):
    input: str | list[Any]
    model: str | None = None
    encoding_format: EncodingFormat = "float"
    dimensions: int | None = None
    user: str | None = None


def create_app(
    settings: EmbeddingApiSettings,
    encoder: Encoder | None = None,
    *,
    load: Callable[[], Encoder] | None = None,
    on_load_failure: Callable[[BaseException], None] | None = None,
    chunker: TextChunker | None = None,
) -> FastAPI:
    """The app over ``encoder`` (ready at once), over what ``load`` returns (loaded in the background), or, given
    neither, over every model the settings name (EMBEDDING_MODELS, each loaded in the background).

    POST /chunk splits with ``chunker`` (for the default model), or with the chunker of the model a request names,
    read at its first request (it needs only the tokenizer, so it answers while the model loads).
    """
    if encoder is not None and load is not None:
        raise ValueError("pass an encoder or a load function, not both")
    app = FastAPI(title="vecsync embedding-api")
    forget_models()
    batcher_options: dict[str, Any] = {
        "max_batch_size": settings.max_batch_size,
        "max_batch_tokens": settings.max_batch_tokens,
        "max_wait_s": settings.max_wait_ms / 1000.0,
        "max_queue_texts": settings.max_queue_texts,
        "on_batch": observe_model_call,
        "on_load_failure": on_load_failure,
        "on_failed_texts": FAILED_TEXTS.inc,
    }
    models: list[ServedModel]
    if encoder is None and load is None:
        models = models_of_settings(settings, served_models(settings), batcher_options, chunker)
    else:
        workers = model_workers(settings) if load is not None else 1

        def on_ready(loaded: Encoder) -> None:
            publish_model_info(loaded)
            report_memory(loaded, workers)

        batcher = Batcher(
            load or (lambda: encoder),  # type: ignore[arg-type, return-value]
            workers=workers,
            warm_up=load is not None,
            background_load=load is not None,
            on_ready=on_ready,
            **batcher_options,
        )
        given_chunker = chunker
        models = [ServedModel(batcher, lambda: given_chunker or load_chunker(settings), None)]
    default = models[0]
    # The default model's batcher, as before; every model's, in the order served.
    app.state.batcher = default.batcher
    app.state.models = models
    QUEUE_TEXTS.set_function(lambda: sum(model.batcher.queued_texts for model in models))
    for model in models:
        app.router.add_event_handler("shutdown", model.batcher.close)

    def served(name: str | None, *, any_name_for_a_lone_model: bool = False) -> ServedModel:
        """The model a request names, the default when it names none; 404 naming the served ones otherwise.

        ``any_name_for_a_lone_model``: OpenAI clients must send a model name, and before EMBEDDING_MODELS any name
        got the one model; with EMBEDDING_MODELS unset, /v1/embeddings keeps answering so."""
        if name is None:
            return default
        for model in models:
            if model.name == name:
                return model
        if any_name_for_a_lone_model and len(models) == 1 and not settings.embedding_models:
            return default
        if default.name is None:
            return default  # an encoder handed in is still loading: answered 503 like any request meanwhile
        names = ", ".join(str(model.name) for model in models)
        raise HTTPException(
            404,
            f"Model {name!r} is not served here; this embedding-api serves {names} (EMBEDDING_MODELS lists the "
            "models it serves). Name one of them, or leave model out for the first.",
        )

    def all_ready() -> bool:
        return all(model.batcher.ready for model in models)

    def load_error() -> BaseException | None:
        return next((model.batcher.load_error for model in models if model.batcher.load_error is not None), None)

    def loaded_encoder(model: ServedModel) -> Encoder:
        assert model.batcher.encoder is not None
        return model.batcher.encoder

    async def embed(model: ServedModel, texts: list[str]) -> Encoded:
        _check_request_limits(texts, settings)
        batcher = model.batcher
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
        return error_response(request.url.path, 422, f"Invalid request: {describe_validation_error(exc)}")

    @app.exception_handler(TextsFailed)
    async def texts_failed(request: Request, exc: TextsFailed) -> Response:
        described = "; ".join(f"text {index} ({error})" for index, error in sorted(exc.errors.items()))
        message = (
            f"The model fails on {described}, each on its own, while it still encodes a known-good text: such a "
            "text fails again whenever it is sent; change it or leave it out."
        )
        failed = [{"index": index, "error": error} for index, error in sorted(exc.errors.items())]
        return error_response(request.url.path, 422, message, extra={"failed": failed})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return error_response(request.url.path, exc.status_code, str(exc.detail), exc.headers)

    @app.post("/encode")
    async def encode_one(request: EncodeRequest) -> Response:
        model = served(request.model)
        encoded = await embed(model, [request.text])
        vector = vectors_in_format(encoded.vectors, request.encoding_format)[0]
        name = loaded_encoder(model).name
        return json_response({"embedding": vector, "model": name, "truncated": encoded.truncated[0]})

    @app.post("/encode_batch")
    async def encode_batch(request: EncodeBatchRequest) -> Response:
        model = served(request.model)
        encoded = await embed(model, request.texts)
        encoder = loaded_encoder(model)
        vectors = vectors_in_format(encoded.vectors, request.encoding_format)
        return json_response(
            {"embeddings": vectors, "model": encoder.name, "dim": encoder.dim, "truncated": encoded.truncated}
        )

    @app.post("/chunk")
    async def chunk(request: ChunkRequest) -> Response:
        model = served(request.model)
        _check_text_count(request.texts, settings)
        characters = sum(len(text) for text in request.texts)
        if characters > settings.max_chunk_request_chars:
            raise HTTPException(
                413,
                f"The texts of this request have {characters} characters in all; the limit is "
                f"MAX_CHUNK_REQUEST_CHARS={settings.max_chunk_request_chars}. Send fewer texts per request.",
            )
        try:
            chunker = await asyncio.to_thread(model.chunker)
        except Exception as exc:  # noqa: BLE001 - a model folder without a usable tokenizer: say so, stay up
            raise HTTPException(503, f"The chunker could not be loaded: {exc}") from None
        tokens = chunker.max_tokens if request.tokens is None else request.tokens
        _check_chunk_sizes(chunker, tokens, request.overlap)
        # Splitting a long text takes milliseconds: off the event loop, so other requests are answered meanwhile.
        spans = await asyncio.to_thread(chunker.spans, request.texts, tokens, request.overlap)
        CHUNKS.inc(sum(len(text_spans) for text_spans in spans))
        return json_response(
            {"model": chunker.model, "tokens": tokens, "max_tokens": chunker.max_tokens, "spans": spans}
        )

    @app.post("/v1/embeddings")
    async def openai_embeddings(request: OpenAIEmbeddingsRequest) -> Response:
        model = served(request.model, any_name_for_a_lone_model=True)
        texts = _openai_texts(request.input)
        encoded = await embed(model, texts)
        encoder = loaded_encoder(model)
        if request.dimensions is not None and request.dimensions != encoder.dim:
            raise HTTPException(422, f"dimensions={request.dimensions} is not available; this model has {encoder.dim}.")
        vectors = vectors_in_format(encoded.vectors, request.encoding_format)
        data = [{"object": "embedding", "index": i, "embedding": vector} for i, vector in enumerate(vectors)]
        tokens = sum(encoded.tokens)
        return json_response(
            {
                "object": "list",
                "data": data,
                "model": encoder.name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    @app.get("/v1/models")
    async def openai_models() -> dict[str, Any]:
        # Empty until every model is loaded, as /readyz: a client taking the first as the default never takes
        # another one that happened to load first.
        if not all_ready():
            return {"object": "list", "data": []}
        data = []
        for model in models:
            encoder = loaded_encoder(model)
            data.append({"id": encoder.name, "object": "model", "owned_by": "vecsync", "dim": encoder.dim})
        return {"object": "list", "data": data}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        failure = load_error()
        if failure is not None:
            return json_response({"status": "failed", "detail": str(failure)}, 503)
        if not all_ready():
            return json_response({"status": "loading"}, 503)
        # The default model's fields at the top, as with one model; every model's under "models", the default first.
        described = [_described(loaded_encoder(model)) for model in models]
        first = described[0]
        body = {"status": "ready", "model": first["id"], "backend": first["backend"], "dim": first["dim"]}
        return json_response(body | {"device": first["device"], "max_tokens": first["max_tokens"], "models": described})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    known_paths = frozenset(getattr(route, "path", "") for route in app.routes)
    app.add_middleware(GuardAndMeasure, settings=settings, known_paths=known_paths)
    return app


def _described(encoder: Encoder) -> dict[str, Any]:
    return {
        "id": encoder.name,
        "backend": encoder.backend,
        "dim": encoder.dim,
        "device": encoder.device,
        "max_tokens": encoder.max_tokens,
    }


def _openai_texts(value: str | list[Any]) -> list[str]:
    texts = [value] if isinstance(value, str) else value
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise HTTPException(
                422, f"input[{index}] is a {type(text).__name__}; send strings (token arrays are not supported)."
            )
    return texts


def _check_text_count(texts: list[str], settings: EmbeddingApiSettings) -> None:
    if not texts:
        raise HTTPException(422, "Send at least one text.")
    if len(texts) > settings.max_texts_per_request:
        raise HTTPException(
            413,
            f"{len(texts)} texts in one request; the limit is MAX_TEXTS_PER_REQUEST={settings.max_texts_per_request}.",
        )


def _check_chunk_sizes(chunker: TextChunker, tokens: int, overlap: int) -> None:
    if tokens > chunker.max_tokens:
        raise HTTPException(
            422,
            f"tokens={tokens} is above the model's window, max_tokens={chunker.max_tokens} ({chunker.model}): the "
            f"model could not read such a chunk whole. Send at most {chunker.max_tokens}, or null for the window.",
        )
    specials = chunker.special_tokens
    if tokens <= specials:
        raise HTTPException(
            422,
            f"tokens={tokens} leaves no room for text beside the model's {specials} special tokens; "
            f"send at least {specials + 1}.",
        )
    if overlap >= tokens - specials:
        raise HTTPException(
            422,
            f"overlap={overlap} must be below tokens={tokens} less the model's {specials} special tokens "
            f"({tokens - specials}): each chunk must reach past the one before it.",
        )


def _check_request_limits(texts: list[str], settings: EmbeddingApiSettings) -> None:
    _check_text_count(texts, settings)
    for index, text in enumerate(texts):
        if not text.strip():
            raise HTTPException(422, f"Text {index} is empty; send non-empty strings only.")
        if len(text) > settings.max_chars_per_text:
            raise HTTPException(
                413,
                f"Text {index} has {len(text)} characters; "
                f"the limit is MAX_CHARS_PER_TEXT={settings.max_chars_per_text}.",
            )
