"""The error tree that decides what the consumer loop does with a failure."""


class VecsyncError(Exception):
    """Base class for every error raised on purpose by vecsync."""


class ConfigurationError(VecsyncError):
    """Raised when a setting is missing or invalid, or contradicts the world (e.g. a collection's size)."""


class TransientError(VecsyncError):
    """Raised when a dependency is unavailable; the batch is retried with backoff and never dead-lettered.

    ``retry_after_s`` is how long the dependency asked to be left alone (an HTTP Retry-After); the
    consumer loop then waits at least that long before the retry.
    """

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PermanentError(VecsyncError):
    """Raised when an input can never be processed; the entry is dead-lettered at once."""


class InvalidEntry(PermanentError):
    """Raised when a stream entry is missing fields, has garbled fields or an unknown schema version."""


class CheckNotRun(VecsyncError):
    """Raised when a command cannot run one of its checks (the embedding-api never told its model): it fails, rather
    than report that nothing was found."""


class HistoryLost(VecsyncError):
    """Raised when the change stream can no longer resume from the stored token."""
