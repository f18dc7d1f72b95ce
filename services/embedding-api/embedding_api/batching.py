"""Dynamic batching: texts of concurrent requests share model calls.

Model threads ("workers", each with its own copy of the model) take the oldest
queued texts into a batch of at most ``max_batch_size`` texts and
``max_batch_tokens`` tokens, waiting at most ``max_wait_s`` after the oldest
text arrived for others to join, and only while fewer texts wait than the last
batch held (a lone client never waits for company that is not coming). While
the model works, the next batch fills up by itself, so under load no one waits
for the timer. With several workers, a free worker takes its equal share (in
tokens) of all the work in hand, waiting or being encoded, so even one large
request keeps every worker busy; and it waits for company only while no other
worker is busy. Each request gets its own texts' vectors back, in order,
through a future, and the event loop never runs the model.

When a model call fails, its texts are encoded again in halves, and the
failing halves in halves again, down to the texts the model fails on alone:
every other request still gets its vectors, and a request holding such a text
fails with ``TextsFailed`` naming it. Before any text is blamed, the model must
still encode a known-good text (the warm-up text); a model that fails on that
too is broken, and so is one out of memory: every request of the call then
fails with ``ModelUnavailable``, which callers answer as retryable.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from embedding_api.backends import Encoder

log = logging.getLogger(__name__)

# Encoded at load, and again to tell a broken model from a text the model fails on.
KNOWN_GOOD_TEXTS = ["warm-up", "a second, somewhat longer warm-up text"]
# Room for a model's error in a reply and a dead letter, not for a whole stack dump.
MAX_ERROR_CHARS = 500


class QueueFull(Exception):
    """Raised by ``submit`` when taking the texts would exceed the queue's capacity."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"the queue is full; retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class NotReady(Exception):
    """Raised by ``submit`` while the model is still loading, or when it failed to load."""


class ModelUnavailable(Exception):
    """Raised to the requests of a model call when the model, not a text, is at fault; a retry may work."""


class TextsFailed(Exception):
    """Raised to a request when the model fails on some of its texts alone while it still encodes a known-good text.

    ``errors`` maps the index of each such text in the request to the model's error on it.
    """

    def __init__(self, errors: dict[int, str]) -> None:
        described = "; ".join(f"text {index}: {error}" for index, error in sorted(errors.items()))
        super().__init__(f"the model failed on {described}")
        self.errors = errors


@dataclass
class Encoded:
    """What a request gets back: one vector per text, with each text's token count and truncation."""

    vectors: np.ndarray  # float32, one row per text
    tokens: list[int]
    truncated: list[bool]


@dataclass
class _Request:
    texts: list[str]
    future: concurrent.futures.Future[Encoded]
    arrived: float
    vectors: list[np.ndarray | None] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    remaining: int = 0
    errors: dict[int, str] = field(default_factory=dict)  # the model's error on each text it failed on alone


@dataclass
class _Item:
    request: _Request
    index: int
    tokens: int
    arrived: float


@dataclass
class BatchStats:
    texts: int
    tokens: int
    truncated: int
    seconds: float


class Batcher:
    """Runs an encoder over the texts of concurrent requests in merged batches. See the module docstring."""

    def __init__(
        self,
        load: Callable[[], Encoder],
        *,
        workers: int = 1,
        max_batch_size: int,
        max_batch_tokens: int,
        max_wait_s: float,
        max_queue_texts: int,
        warm_up: bool = True,
        background_load: bool = True,
        on_batch: Callable[[BatchStats], None] | None = None,
        on_ready: Callable[[Encoder], None] | None = None,
        on_load_failure: Callable[[BaseException], None] | None = None,
        on_failed_texts: Callable[[int], None] | None = None,
    ) -> None:
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_s
        self.max_queue_texts = max_queue_texts
        self.workers = workers
        # The first worker's encoder: the one that describes the model (name, dimension, window).
        self.encoder: Encoder | None = None
        self._encoders: list[Encoder] = []
        self.load_error: BaseException | None = None
        self._load = load
        self._warm_up = warm_up
        self._on_batch = on_batch
        self._on_ready = on_ready
        self._on_load_failure = on_load_failure
        self._on_failed_texts = on_failed_texts
        self._cond = threading.Condition()
        self._requests: deque[_Request] = deque()
        self._items: deque[_Item] = deque()
        self._queued = 0
        self._closed = False
        self._rate = 0.0  # texts per second, a moving average, for Retry-After
        # How many texts the last batch gathered: waiting for company pays only when company came last time.
        self._expected = 1
        self._idle_workers = 0
        self._busy_workers = 0
        self._tokens_in_flight = 0  # of the batches being encoded
        self._ready = threading.Event()
        # Loading in the background lets the port open (and /healthz answer) while a large model loads.
        self._background_load = background_load
        self._others: list[threading.Thread] = []  # the workers after the first, started once the model loaded
        if not background_load and not self._start():
            raise RuntimeError(f"The model failed to load: {self.load_error}")
        self._thread = threading.Thread(target=self._run, args=(0,), name="model-0", daemon=True)
        self._thread.start()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    @property
    def queued_texts(self) -> int:
        return self._queued

    def submit(self, texts: list[str]) -> concurrent.futures.Future[Encoded]:
        """Queue ``texts``; the future resolves to their vectors, in order."""
        if not self.ready:
            raise NotReady(str(self.load_error) if self.load_error else "the model is still loading")
        future: concurrent.futures.Future[Encoded] = concurrent.futures.Future()
        with self._cond:
            if self._closed:
                raise NotReady("the service is shutting down")
            if self._queued + len(texts) > self.max_queue_texts:
                raise QueueFull(self._retry_after_s())
            self._requests.append(_Request(texts, future, time.monotonic()))
            self._queued += len(texts)
            self._cond.notify()
        return future

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in [self._thread, *self._others]:
            thread.join(timeout=30)

    def _retry_after_s(self) -> int:
        # Time to work through what is queued at the recent pace; at least a second.
        rate = self._rate or 10.0
        return max(1, min(60, round(self._queued / rate)))

    # The model workers ------------------------------------------------------

    def _run(self, worker: int) -> None:
        # Worker 0 loads every copy of the model (unless that was done up front), then starts the other workers.
        if worker == 0 and self._background_load and not self._start():
            return
        encoder = self._encoders[worker]
        while True:
            batch = self._next_batch(encoder)
            if batch is None:
                break
            if batch:
                self._encode(batch, encoder)
        self._fail_pending(NotReady("the service is shutting down"))

    def _start(self) -> bool:
        try:
            # One copy per worker, loaded one after another: the first load may build a cache the others reuse.
            for _ in range(self.workers):
                encoder = self._load()
                if self._warm_up:
                    encoder.encode(KNOWN_GOOD_TEXTS)
                self._encoders.append(encoder)
        except BaseException as exc:  # reported through readiness and the callback
            log.exception("The model failed to load")
            self.load_error = exc
            if self._on_load_failure:
                self._on_load_failure(exc)
            return False
        self.encoder = self._encoders[0]
        for worker in range(1, self.workers):
            thread = threading.Thread(target=self._run, args=(worker,), name=f"model-{worker}", daemon=True)
            thread.start()
            self._others.append(thread)
        if self._on_ready:
            self._on_ready(self.encoder)
        self._ready.set()
        return True

    def _next_batch(self, encoder: Encoder) -> list[_Item] | None:
        """The oldest texts that fit in one batch; None once closed."""
        with self._cond:
            self._idle_workers += 1
            try:
                while not self._items and not self._requests:
                    if self._closed:
                        return None
                    self._cond.wait()
            finally:
                self._idle_workers -= 1
        while True:
            self._admit_new_requests(encoder)
            with self._cond:
                if self._closed:
                    return None
                if not self._items:
                    return []  # every request was cancelled
                wait = self._items[0].arrived + self.max_wait_s - time.monotonic()
                # Waiting for company pays only while the model would otherwise sit idle: when another worker is
                # busy, the texts are better encoded now, on this worker, than merged later.
                if (
                    self.max_batch_size == 1
                    or wait <= 0
                    or self.max_wait_s == 0
                    or self._busy_workers
                    or self._batch_is_full()
                ):
                    self._busy_workers += 1
                    return self._take_batch()
                if not self._requests:
                    self._cond.wait(wait)

    def _admit_new_requests(self, encoder: Encoder) -> None:
        """Count the tokens of newly queued requests (outside the lock) and queue their texts as items."""
        with self._cond:
            arrived = list(self._requests)
            self._requests.clear()
        for request in arrived:
            if not request.future.set_running_or_notify_cancel():
                with self._cond:
                    self._queued -= len(request.texts)
                continue
            try:
                counts = encoder.count_tokens(request.texts)
            except Exception as exc:  # noqa: BLE001 - one request's failure is its own
                request.future.set_exception(exc)
                with self._cond:
                    self._queued -= len(request.texts)
                continue
            request.tokens = counts
            request.vectors = [None] * len(request.texts)
            request.remaining = len(request.texts)
            items = [
                _Item(request, i, min(count, encoder.max_tokens), request.arrived) for i, count in enumerate(counts)
            ]
            with self._cond:
                self._items.extend(items)

    def _batch_is_full(self) -> bool:
        size = tokens = 0
        target = min(self.max_batch_size, self._expected)
        for item in self._items:
            size += 1
            tokens += item.tokens
            if size >= target or tokens >= self.max_batch_tokens:
                return True
        return False

    def _take_batch(self) -> list[_Item]:
        token_limit = self.max_batch_tokens
        if self.workers > 1:
            # Take this worker's equal share of all the work in hand (waiting, and being encoded by the others):
            # one large request then keeps every worker busy, and no worker sits idle while another works through
            # a long batch of everything that had queued up.
            waiting = sum(item.tokens for item in self._items)
            token_limit = min(token_limit, -(-(waiting + self._tokens_in_flight) // self.workers))
        batch = [self._items.popleft()]
        tokens = batch[0].tokens
        if self.max_batch_size == 1:
            # Merging off: the first request's texts alone, as one model call.
            owner = batch[0].request
            while self._items and self._items[0].request is owner:
                item = self._items.popleft()
                tokens += item.tokens
                batch.append(item)
        else:
            while self._items and len(batch) < self.max_batch_size:
                if tokens + self._items[0].tokens > token_limit:
                    break
                item = self._items.popleft()
                tokens += item.tokens
                batch.append(item)
            self._expected = len(batch)
        self._tokens_in_flight += tokens
        if self._idle_workers:
            self._cond.notify()  # an idle worker takes the next share
        return batch

    def _encode(self, batch: list[_Item], encoder: Encoder) -> None:
        started = time.perf_counter()
        texts = [item.request.texts[item.index] for item in batch]
        merged = True
        try:
            outcomes: list[np.ndarray | str] = list(_call(encoder, texts))
        except Exception as exc:  # noqa: BLE001 - a text or the model is at fault: find out which
            log.warning("A model call over %d texts failed (%s); encoding them in smaller groups", len(batch), exc)
            merged = False
            try:
                outcomes = _isolate(encoder, texts, exc)
            except ModelUnavailable as unavailable:
                log.error("The model failed on a call over %d texts: %s", len(batch), unavailable)
                self._done(batch, 0.0)
                for request in {id(item.request): item.request for item in batch}.values():
                    if not request.future.done():
                        request.future.set_exception(unavailable)
                return
        elapsed = time.perf_counter() - started
        self._done(batch, elapsed if merged else 0.0)
        finished: list[_Request] = []
        with self._cond:
            # A request's texts may be spread over several workers' batches: the last one to finish answers it.
            for item, outcome in zip(batch, outcomes, strict=True):
                request = item.request
                if isinstance(outcome, str):
                    request.errors[item.index] = outcome
                else:
                    request.vectors[item.index] = outcome
                request.remaining -= 1
                if request.remaining == 0:
                    finished.append(request)
        for request in finished:
            if request.future.done():
                continue
            if request.errors:
                request.future.set_exception(TextsFailed(dict(request.errors)))
            else:
                request.future.set_result(self._result(request))
        failed = sum(1 for outcome in outcomes if isinstance(outcome, str))
        if failed:
            log.warning(
                "The model failed on %d of %d texts by themselves; their requests are refused", failed, len(batch)
            )
            if self._on_failed_texts:
                self._on_failed_texts(failed)
        if merged and self._on_batch:
            max_tokens = encoder.max_tokens
            truncated = sum(1 for item in batch if item.request.tokens[item.index] > max_tokens)
            self._on_batch(BatchStats(len(batch), sum(item.tokens for item in batch), truncated, elapsed))

    def _done(self, batch: list[_Item], elapsed: float) -> None:
        """Account for a finished model call; ``elapsed`` (0: unknown) feeds the rate behind Retry-After."""
        with self._cond:
            self._busy_workers -= 1
            self._tokens_in_flight -= sum(item.tokens for item in batch)
            self._queued -= len(batch)
            if elapsed:
                rate = self.workers * len(batch) / max(elapsed, 1e-6)
                self._rate = 0.8 * self._rate + 0.2 * rate if self._rate else rate

    def _result(self, request: _Request) -> Encoded:
        assert self.encoder is not None
        window = self.encoder.max_tokens
        vectors = np.stack([vector for vector in request.vectors if vector is not None])
        return Encoded(vectors, [min(n, window) for n in request.tokens], [n > window for n in request.tokens])

    def _fail_pending(self, exc: Exception) -> None:
        with self._cond:
            pending = [request for request in self._requests] + [item.request for item in self._items]
            self._requests.clear()
            self._items.clear()
            self._queued = 0
        for request in pending:
            if not request.future.done():
                try:
                    request.future.set_exception(exc)
                except concurrent.futures.InvalidStateError:
                    pass


def _isolate(encoder: Encoder, texts: list[str], error: Exception) -> list[np.ndarray | str]:
    """Each text's vector, or the model's error on that text alone; ModelUnavailable when the model is at fault."""
    _raise_if_out_of_memory(error)
    outcomes: list[np.ndarray | str | None] = [None] * len(texts)
    _bisect(encoder, texts, list(range(len(texts))), error, outcomes)
    if any(isinstance(outcome, str) for outcome in outcomes):
        try:
            _call(encoder, KNOWN_GOOD_TEXTS)
        except Exception as exc:
            _raise_if_out_of_memory(exc)
            raise ModelUnavailable(
                f"the model fails on a known-good text too ({_describe(exc)}), so the model is at fault, not the texts"
            ) from exc
    return [outcome for outcome in outcomes if outcome is not None]


def _call(encoder: Encoder, texts: list[str]) -> np.ndarray:
    vectors = encoder.encode(texts)
    if len(vectors) != len(texts):
        raise RuntimeError(f"the encoder returned {len(vectors)} vectors for {len(texts)} texts")
    return vectors


def _bisect(
    encoder: Encoder, texts: list[str], indexes: list[int], error: Exception, outcomes: list[np.ndarray | str | None]
) -> None:
    # The texts at ``indexes`` failed together with ``error``: encode each half, and split the failing halves again.
    if len(indexes) == 1:
        outcomes[indexes[0]] = _describe(error)
        return
    middle = len(indexes) // 2
    for part in (indexes[:middle], indexes[middle:]):
        try:
            vectors = _call(encoder, [texts[i] for i in part])
        except Exception as exc:  # noqa: BLE001 - narrowed down further
            _raise_if_out_of_memory(exc)
            _bisect(encoder, texts, part, exc, outcomes)
            continue
        for i, vector in zip(part, vectors, strict=True):
            outcomes[i] = vector


def _raise_if_out_of_memory(exc: Exception) -> None:
    # torch.cuda.OutOfMemoryError, onnxruntime's "Failed to allocate memory", or the host's MemoryError: the device
    # was too full for this call, which says nothing about its texts.
    message = str(exc).lower()
    if (
        isinstance(exc, MemoryError)
        or type(exc).__name__ == "OutOfMemoryError"
        or "out of memory" in message
        or "failed to allocate memory" in message
    ):
        raise ModelUnavailable(f"the model ran out of memory ({_describe(exc)})") from exc


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
