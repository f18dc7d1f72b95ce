"""What every CLI command works with: settings, connections made on first use, confirmation and progress."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import redis
from pymongo.collection import Collection
from tqdm import tqdm

from vecsync.cli.settings import CliSettings
from vecsync.cli.store import Store, open_store
from vecsync.errors import VecsyncError
from vecsync.mongo_reads import open_collection
from vecsync.redis_client import connect

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_DRIFT = 3  # verify found differences and did not repair them
EXIT_INTERRUPTED = 130
# The reader of the output went away (`vecsync status | head`): 128 + SIGPIPE, what any tool's shell status is then.
EXIT_BROKEN_PIPE = 141


class Declined(VecsyncError):
    """Raised when the operator does not confirm a change."""


@dataclass
class Context:
    settings: CliSettings
    assume_yes: bool = False
    interactive: bool = field(default_factory=lambda: sys.stdin.isatty())
    _redis: redis.Redis | None = None
    _collection: Collection[dict[str, Any]] | None = None
    _store: Store | None = None

    @property
    def redis(self) -> redis.Redis:
        if self._redis is None:
            self._redis = connect(self.settings.redis_url, cluster=self.settings.redis_cluster)
        return self._redis

    @property
    def collection(self) -> Collection[dict[str, Any]]:
        if self._collection is None:
            self._collection = open_collection(self.settings, "vecsync-cli")
        return self._collection

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = open_store(self.settings)
        return self._store

    def confirm(self, plan: str) -> None:
        """Print what is about to happen; go on only with --yes or a 'y' typed at the prompt."""
        print(plan)
        if self.assume_yes:
            return
        if not self.interactive:
            raise Declined("Not confirmed: run again with --yes to proceed without a prompt.")
        if input("Proceed? [y/N] ").strip().lower() not in {"y", "yes"}:
            raise Declined("Cancelled; nothing was changed.")

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
        if self._collection is not None:
            self._collection.database.client.close()


def count(number: int, noun: str, plural: str | None = None) -> str:
    """``number`` with ``noun`` in agreement: "1 dead letter", "2 dead letters"."""
    return f"{number} {noun if number == 1 else plural or noun + 's'}"


class Progress:
    """Progress on stderr, so that stdout stays clean for scripts: a bar redrawn in place on a terminal, and
    anywhere else (a pipe, a log file) a plain line now and then and one at the end."""

    PLAIN_EVERY_S = 5.0

    def __init__(self, total: int | None, unit: str, description: str) -> None:
        self.total, self.unit, self.description = total, unit, description
        self.done = 0
        self._bar = (
            tqdm(total=total, unit=unit, desc=description, file=sys.stderr, dynamic_ncols=True)
            if sys.stderr.isatty()
            else None
        )
        self._printed_at = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif time.monotonic() - self._printed_at >= self.PLAIN_EVERY_S:
            self._print()

    def note(self, message: str) -> None:
        """A line on stderr that does not break the bar."""
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        else:
            self._print()

    def _print(self) -> None:
        of = f"/{self.total}" if self.total is not None else ""
        print(f"{self.description}: {self.done}{of} {self.unit}", file=sys.stderr, flush=True)
        self._printed_at = time.monotonic()


@contextmanager
def progress(total: int | None, unit: str, description: str) -> Iterator[Progress]:
    """Progress of a long command on stderr (see Progress); its last state is shown when the block ends."""
    shown = Progress(total, unit, description)
    try:
        yield shown
    finally:
        shown.close()
