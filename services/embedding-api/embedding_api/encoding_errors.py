"""What a request for vectors can be refused with: the Batcher raises these, and the HTTP layer answers each."""

from __future__ import annotations


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
