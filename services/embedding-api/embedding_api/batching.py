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

When a model call fails, failure_isolation finds the texts the model fails on
alone: every other request still gets its vectors, and a request holding such a
text fails with ``TextsFailed`` naming it. When the model itself is at fault
(broken, or out of memory), every request of the call fails with
``ModelUnavailable``, which callers answer as retryable.
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
from embedding_api.encoding_errors import ModelUnavailable, NotReady, QueueFull, TextsFailed
from embedding_api.failure_isolation import KNOWN_GOOD_TEXTS, encode_one_vector_each, isolate_failing_texts

log = logging.getLogger(__name__)


@dataclass
class Encoded:
    """What a request gets back: one vector per text, with each text's token count and truncation."""

    vectors: np.ndarray  # float32, one row per text
    tokens: list[int]
    truncated: list[bool]


@dataclass
class _PendingRequest:
    """A submitted request, with what is known of its texts so far (filled in once it is admitted)."""

    texts: list[str]
    future: concurrent.futures.Future[Encoded]
    arrived: float
    vectors: list[np.ndarray | None] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    remaining: int = 0
    errors: dict[int, str] = field(default_factory=dict)  # the model's error on each text it failed on alone


@dataclass
class _QueuedText:
    """One admitted text, ``request.texts[index]``, waiting for a batch; ``tokens``: its count after truncation."""

    request: _PendingRequest
    index: int
    tokens: int
    arrived: float


@dataclass
class BatchStats:
    """One merged model call, as the metrics see it."""

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
        self._new_requests: deque[_PendingRequest] = deque()
        self._admitted_texts: deque[_QueuedText] = deque()
        self._queued = 0
        self._closed = False
        self._texts_per_s = 0.0  # texts per second, a moving average, for Retry-After
        # How many texts the last batch gathered: waiting for company pays only when company came last time.
        self._last_batch_texts = 1
        self._idle_workers = 0
        self._busy_workers = 0
        self._tokens_in_flight = 0  # of the batches being encoded
        self._ready = threading.Event()
        # Loading in the background lets the port open (and /healthz answer) while a large model loads.
        self._background_load = background_load
        self._other_workers: list[threading.Thread] = []  # the workers after the first, started once the model loaded
        if not background_load and not self._load_models_then_start_workers():
            raise RuntimeError(f"The model failed to load: {self.load_error}")
        self._thread = threading.Thread(target=self._worker_loop, args=(0,), name="model-0", daemon=True)
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
            self._new_requests.append(_PendingRequest(texts, future, time.monotonic()))
            self._queued += len(texts)
            self._cond.notify()
        return future

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in [self._thread, *self._other_workers]:
            thread.join(timeout=30)

    def _retry_after_s(self) -> int:
        # Time to work through what is queued at the recent pace; at least a second.
        rate = self._texts_per_s or 10.0
        return max(1, min(60, round(self._queued / rate)))

    # The model workers ------------------------------------------------------

    def _worker_loop(self, worker: int) -> None:
        # Worker 0 loads every copy of the model (unless that was done up front), then starts the other workers.
        if worker == 0 and self._background_load and not self._load_models_then_start_workers():
            return
        encoder = self._encoders[worker]
        while True:
            batch = self._next_batch(encoder)
            if batch is None:
                break
            if batch:
                self._encode_and_answer(batch, encoder)
        self._fail_pending(NotReady("the service is shutting down"))

    def _load_models_then_start_workers(self) -> bool:
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
            thread = threading.Thread(target=self._worker_loop, args=(worker,), name=f"model-{worker}", daemon=True)
            thread.start()
            self._other_workers.append(thread)
        if self._on_ready:
            self._on_ready(self.encoder)
        self._ready.set()
        return True

    def _next_batch(self, encoder: Encoder) -> list[_QueuedText] | None:
        """The oldest texts that fit in one batch; None once closed."""
        with self._cond:
            self._idle_workers += 1
            try:
                while not self._admitted_texts and not self._new_requests:
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
                if not self._admitted_texts:
                    return []  # every request was cancelled
                wait = self._admitted_texts[0].arrived + self.max_wait_s - time.monotonic()
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
                if not self._new_requests:
                    self._cond.wait(wait)

    def _admit_new_requests(self, encoder: Encoder) -> None:
        """Count the tokens of newly queued requests (outside the lock) and queue their texts as items."""
        with self._cond:
            arrived = list(self._new_requests)
            self._new_requests.clear()
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
                _QueuedText(request, i, min(count, encoder.max_tokens), request.arrived)
                for i, count in enumerate(counts)
            ]
            with self._cond:
                self._admitted_texts.extend(items)

    def _batch_is_full(self) -> bool:
        size = tokens = 0
        target = min(self.max_batch_size, self._last_batch_texts)
        for item in self._admitted_texts:
            size += 1
            tokens += item.tokens
            if size >= target or tokens >= self.max_batch_tokens:
                return True
        return False

    def _take_batch(self) -> list[_QueuedText]:
        token_limit = self.max_batch_tokens
        if self.workers > 1:
            # Take this worker's equal share of all the work in hand (waiting, and being encoded by the others):
            # one large request then keeps every worker busy, and no worker sits idle while another works through
            # a long batch of everything that had queued up.
            waiting = sum(item.tokens for item in self._admitted_texts)
            token_limit = min(token_limit, -(-(waiting + self._tokens_in_flight) // self.workers))
        batch = [self._admitted_texts.popleft()]
        tokens = batch[0].tokens
        if self.max_batch_size == 1:
            # Merging off: the first request's texts alone, as one model call.
            owner = batch[0].request
            while self._admitted_texts and self._admitted_texts[0].request is owner:
                item = self._admitted_texts.popleft()
                tokens += item.tokens
                batch.append(item)
        else:
            while self._admitted_texts and len(batch) < self.max_batch_size:
                if tokens + self._admitted_texts[0].tokens > token_limit:
                    break
                item = self._admitted_texts.popleft()
                tokens += item.tokens
                batch.append(item)
            self._last_batch_texts = len(batch)
        self._tokens_in_flight += tokens
        if self._idle_workers:
            self._cond.notify()  # an idle worker takes the next share
        return batch

    def _encode_and_answer(self, batch: list[_QueuedText], encoder: Encoder) -> None:
        started = time.perf_counter()
        texts = [item.request.texts[item.index] for item in batch]
        merged = True
        try:
            outcomes: list[np.ndarray | str] = list(encode_one_vector_each(encoder, texts))
        except Exception as exc:  # noqa: BLE001 - a text or the model is at fault: find out which
            log.warning("A model call over %d texts failed (%s); encoding them in smaller groups", len(batch), exc)
            merged = False
            try:
                outcomes = isolate_failing_texts(encoder, texts, exc)
            except ModelUnavailable as unavailable:
                log.error("The model failed on a call over %d texts: %s", len(batch), unavailable)
                self._account_finished_call(batch, 0.0)
                for request in {id(item.request): item.request for item in batch}.values():
                    if not request.future.done():
                        request.future.set_exception(unavailable)
                return
        elapsed = time.perf_counter() - started
        self._account_finished_call(batch, elapsed if merged else 0.0)
        finished: list[_PendingRequest] = []
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
                request.future.set_result(self._assembled_result(request))
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

    def _account_finished_call(self, batch: list[_QueuedText], elapsed: float) -> None:
        """Account for a finished model call; ``elapsed`` (0: unknown) feeds the rate behind Retry-After."""
        with self._cond:
            self._busy_workers -= 1
            self._tokens_in_flight -= sum(item.tokens for item in batch)
            self._queued -= len(batch)
            if elapsed:
                rate = self.workers * len(batch) / max(elapsed, 1e-6)
                self._texts_per_s = 0.8 * self._texts_per_s + 0.2 * rate if self._texts_per_s else rate

    def _assembled_result(self, request: _PendingRequest) -> Encoded:
        assert self.encoder is not None
        window = self.encoder.max_tokens
        vectors = np.stack([vector for vector in request.vectors if vector is not None])
        return Encoded(vectors, [min(n, window) for n in request.tokens], [n > window for n in request.tokens])

    def _fail_pending(self, exc: Exception) -> None:
        with self._cond:
            pending = [request for request in self._new_requests] + [item.request for item in self._admitted_texts]
            self._new_requests.clear()
            self._admitted_texts.clear()
            self._queued = 0
        for request in pending:
            if not request.future.done():
                try:
                    request.future.set_exception(exc)
                except concurrent.futures.InvalidStateError:
                    pass
