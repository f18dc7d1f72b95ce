"""Dynamic batching: merged requests each get their own texts' vectors, in order, within the batch limits."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from embedding_api.backends import HashEncoder
from embedding_api.batching import Batcher
from embedding_api.encoding_errors import ModelUnavailable, NotReady, QueueFull, TextsFailed


class RecordingEncoder(HashEncoder):
    """The hash encoder, slowed down a little, remembering every batch it was given."""

    def __init__(self, delay_s: float = 0.01, fail_on: str | None = None) -> None:
        super().__init__(8)
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.batches: list[list[str]] = []

    def encode(self, texts: list[str]) -> np.ndarray:
        self.batches.append(list(texts))
        time.sleep(self.delay_s)
        if self.fail_on in texts:
            raise RuntimeError("boom")
        return super().encode(texts)


def batcher(encoder: HashEncoder | list[HashEncoder], **overrides: float) -> Batcher:
    """A batcher over ``encoder``, or with one worker per encoder of a list."""
    encoders = encoder if isinstance(encoder, list) else [encoder]
    loads = iter(encoders)
    options: dict[str, float] = {
        "max_batch_size": 16,
        "max_batch_tokens": 10_000,
        "max_wait_s": 0.02,
        "max_queue_texts": 10_000,
    }
    options.update(overrides)
    return Batcher(
        lambda: next(loads),
        workers=len(encoders),
        max_batch_size=int(options["max_batch_size"]),
        max_batch_tokens=int(options["max_batch_tokens"]),
        max_wait_s=options["max_wait_s"],
        max_queue_texts=int(options["max_queue_texts"]),
        warm_up=False,
        background_load=False,
    )


def requests_of_many_sizes(count: int) -> list[list[str]]:
    return [[f"request {r} text {i} " + "word " * (i % 5) for i in range(1 + r % 7)] for r in range(count)]


def run_concurrently(subject: Batcher, requests: list[list[str]]) -> list[list[list[float]]]:
    with ThreadPoolExecutor(max_workers=32) as pool:
        futures = list(pool.map(subject.submit, requests))
        return [future.result(timeout=30).vectors for future in futures]


def test_merged_requests_get_their_own_vectors_in_order() -> None:
    encoder = RecordingEncoder()
    subject = batcher(encoder)
    requests = requests_of_many_sizes(200)
    results = run_concurrently(subject, requests)
    reference = HashEncoder(8)
    for texts, vectors in zip(requests, results, strict=True):
        assert np.array_equal(vectors, reference.encode(texts))
    # Requests really were merged: some model call held texts of several requests.
    assert any(len({text.split(" text ")[0] for text in batch}) > 1 for batch in encoder.batches)
    assert all(len(batch) <= 16 for batch in encoder.batches)
    assert sum(len(batch) for batch in encoder.batches) == sum(len(texts) for texts in requests)
    subject.close()


def test_a_request_larger_than_a_batch_is_split_and_reassembled() -> None:
    encoder = RecordingEncoder(delay_s=0)
    subject = batcher(encoder, max_batch_size=4)
    texts = [f"text {i}" for i in range(10)]
    assert np.array_equal(subject.submit(texts).result(timeout=10).vectors, HashEncoder(8).encode(texts))
    assert [len(batch) for batch in encoder.batches] == [4, 4, 2]
    subject.close()


def test_several_workers_answer_every_request_with_its_own_vectors() -> None:
    encoders = [RecordingEncoder(), RecordingEncoder()]
    subject = batcher(encoders)
    requests = requests_of_many_sizes(200)
    results = run_concurrently(subject, requests)
    for texts, vectors in zip(requests, results, strict=True):
        assert np.array_equal(vectors, HashEncoder(8).encode(texts))
    assert all(encoder.batches for encoder in encoders), "both workers encoded"
    assert sum(len(batch) for encoder in encoders for batch in encoder.batches) == sum(map(len, requests))
    subject.close()


def test_idle_workers_share_one_large_request() -> None:
    encoders = [RecordingEncoder(delay_s=0.2), RecordingEncoder(delay_s=0.2)]
    subject = batcher(encoders, max_batch_size=64, max_wait_s=0)
    texts = [f"text {i}" for i in range(32)]
    deadline = time.monotonic() + 10
    while subject._idle_workers < 2 and time.monotonic() < deadline:  # both worker threads are up and waiting
        time.sleep(0.01)
    assert np.array_equal(subject.submit(texts).result(timeout=10).vectors, HashEncoder(8).encode(texts))
    # Each worker encoded one half.
    assert [[len(batch) for batch in encoder.batches] for encoder in encoders] == [[16], [16]]
    subject.close()


def test_batches_respect_the_token_limit() -> None:
    encoder = RecordingEncoder()
    subject = batcher(encoder, max_batch_tokens=20)  # each text below counts 5 tokens (3 words + 2)
    run_concurrently(subject, [["one two three"] * 3 for _ in range(20)])
    assert all(len(batch) <= 4 for batch in encoder.batches)
    subject.close()


def test_batch_size_one_never_merges_requests() -> None:
    encoder = RecordingEncoder()
    subject = batcher(encoder, max_batch_size=1)
    requests = requests_of_many_sizes(40)
    results = run_concurrently(subject, requests)
    assert [r.tolist() for r in results] == [HashEncoder(8).encode(texts).tolist() for texts in requests]
    # Each model call is exactly one request's texts.
    assert sorted(map(tuple, encoder.batches)) == sorted(map(tuple, requests))
    subject.close()


def test_truncation_and_token_counts_are_reported() -> None:
    subject = batcher(RecordingEncoder(delay_s=0))
    long_text = "word " * 300
    encoded = subject.submit(["short text", long_text]).result(timeout=10)
    assert encoded.truncated == [False, True]
    assert encoded.tokens == [4, 256]
    subject.close()


def test_a_full_queue_is_refused_with_a_retry_delay() -> None:
    subject = batcher(RecordingEncoder(delay_s=0.2), max_queue_texts=4, max_batch_size=2)
    first = subject.submit(["a", "b"])
    subject.submit(["c", "d"])
    with pytest.raises(QueueFull) as refused:
        subject.submit(["e"])
    assert refused.value.retry_after_s >= 1
    first.result(timeout=10)
    subject.close()


def test_a_failing_batch_fails_only_its_requests() -> None:
    encoder = RecordingEncoder(delay_s=0, fail_on="poison")
    subject = batcher(encoder, max_batch_size=1)
    with pytest.raises(TextsFailed) as failed:
        subject.submit(["poison"]).result(timeout=10)
    assert failed.value.errors == {0: "RuntimeError: boom"}
    assert np.array_equal(subject.submit(["fine"]).result(timeout=10).vectors, HashEncoder(8).encode(["fine"]))
    assert subject.queued_texts == 0
    subject.close()


def test_a_text_the_model_fails_on_fails_only_its_own_request() -> None:
    encoder = RecordingEncoder(fail_on="poison")
    subject = batcher(encoder)
    requests = requests_of_many_sizes(30)
    requests[7] = ["fine one", "fine two", "poison", "fine three"]
    futures = [subject.submit(texts) for texts in requests]
    for index, (texts, future) in enumerate(zip(requests, futures, strict=True)):
        if index == 7:
            with pytest.raises(TextsFailed) as failed:
                future.result(timeout=30)
            assert failed.value.errors == {2: "RuntimeError: boom"}
        else:
            assert np.array_equal(future.result(timeout=30).vectors, HashEncoder(8).encode(texts))
    merged = next(batch for batch in encoder.batches if "poison" in batch)
    assert any(text.startswith("request ") for text in merged), "the poison text shared a model call with others"
    assert subject.queued_texts == 0
    subject.close()


def test_every_failing_text_of_a_request_is_named() -> None:
    encoder = RecordingEncoder(delay_s=0, fail_on="poison")
    subject = batcher(encoder)
    with pytest.raises(TextsFailed) as failed:
        subject.submit(["a", "poison", "b", "c", "poison", "d"]).result(timeout=10)
    assert sorted(failed.value.errors) == [1, 4]
    assert "text 1" in str(failed.value) and "RuntimeError: boom" in str(failed.value)
    subject.close()


def test_a_request_spread_over_two_workers_fails_with_its_failing_index() -> None:
    encoders = [RecordingEncoder(delay_s=0.1, fail_on="poison"), RecordingEncoder(delay_s=0.1, fail_on="poison")]
    subject = batcher(encoders, max_batch_size=64, max_wait_s=0)
    texts = [f"text {i}" for i in range(32)]
    texts[20] = "poison"
    deadline = time.monotonic() + 10
    while subject._idle_workers < 2 and time.monotonic() < deadline:  # both worker threads are up and waiting
        time.sleep(0.01)
    with pytest.raises(TextsFailed) as failed:
        subject.submit(texts).result(timeout=10)
    assert failed.value.errors == {20: "RuntimeError: boom"}
    assert all(encoder.batches for encoder in encoders), "both workers encoded"
    assert subject.queued_texts == 0
    assert np.array_equal(subject.submit(["after"]).result(timeout=10).vectors, HashEncoder(8).encode(["after"]))
    subject.close()


class BrokenEncoder(HashEncoder):
    """A model that fails on every text: a server fault, never the texts' fault."""

    def __init__(self) -> None:
        super().__init__(8)

    def encode(self, texts: list[str]) -> np.ndarray:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


def test_a_model_that_fails_on_everything_is_unavailable_not_a_text_problem() -> None:
    subject = batcher(BrokenEncoder())
    futures = [subject.submit(["first", "second"]), subject.submit(["third"])]
    for future in futures:
        with pytest.raises(ModelUnavailable, match="known-good text"):
            future.result(timeout=10)
    assert subject.queued_texts == 0
    subject.close()


class OutOfMemoryEncoder(HashEncoder):
    """Runs out of device memory whenever "huge" is in the model call."""

    def __init__(self) -> None:
        super().__init__(8)

    def encode(self, texts: list[str]) -> np.ndarray:
        if "huge" in texts:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().encode(texts)


def test_out_of_memory_is_transient_not_a_text_problem() -> None:
    subject = batcher(OutOfMemoryEncoder())
    with pytest.raises(ModelUnavailable, match="out of memory"):
        subject.submit(["fine", "huge"]).result(timeout=10)
    assert np.array_equal(subject.submit(["fine"]).result(timeout=10).vectors, HashEncoder(8).encode(["fine"]))
    subject.close()


def test_not_ready_while_loading() -> None:
    release = threading.Event()

    def slow_load() -> HashEncoder:
        release.wait(10)
        return HashEncoder(8)

    subject = Batcher(slow_load, max_batch_size=8, max_batch_tokens=1000, max_wait_s=0, max_queue_texts=100)
    with pytest.raises(NotReady, match="loading"):
        subject.submit(["early"])
    release.set()
    assert subject.wait_ready(10)
    assert len(subject.submit(["late"]).result(timeout=10).vectors[0]) == 8
    subject.close()


def test_a_failed_load_is_reported() -> None:
    failures: list[BaseException] = []

    def broken_load() -> HashEncoder:
        raise FileNotFoundError("no model at /nowhere")

    subject = Batcher(
        broken_load,
        max_batch_size=8,
        max_batch_tokens=1000,
        max_wait_s=0,
        max_queue_texts=100,
        on_load_failure=failures.append,
    )
    subject.close()
    assert isinstance(failures[0], FileNotFoundError)
    with pytest.raises(NotReady, match="no model"):
        subject.submit(["x"])
