"""What every CLI command works with: settings, connections made on first use, confirmation and progress."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pymongo
import redis
from bson.codec_options import DatetimeConversion
from pymongo.collection import Collection
from tqdm import tqdm

from vecsync.cli.settings import CliSettings
from vecsync.cli.store import Store, open_store
from vecsync.errors import VecsyncError
from vecsync.streams import connect

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_DRIFT = 3  # verify found differences and did not repair them
EXIT_INTERRUPTED = 130


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
            self._redis = connect(self.settings.redis_url)
        return self._redis

    @property
    def collection(self) -> Collection[dict[str, Any]]:
        if self._collection is None:
            client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
                self.settings.mongo_uri,
                datetime_conversion=DatetimeConversion.DATETIME_AUTO,
                unicode_decode_error_handler="replace",
                appname="vecsync-cli",
            )
            self._collection = client[self.settings.mongo_database][self.settings.mongo_collection]
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


@contextmanager
def progress(total: int | None, unit: str, description: str) -> Iterator[tqdm]:
    """A progress bar on stderr, so that stdout stays clean for scripts."""
    with tqdm(total=total, unit=unit, desc=description, file=sys.stderr, dynamic_ncols=True) as bar:
        yield bar
