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
from vecsync.errors import ConfigurationError, VecsyncError
from vecsync.mongo_reads import open_collection
from vecsync.redis_client import connect
from vecsync.sync import Sync
from vecsync.syncs import load_syncs, settings_for, sync_of

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
    """The CLI's settings and connections. ``for_sync`` gives the context of one sync: its settings made by
    settings_for (its collection, Qdrant collection, mapping and streams), its own MongoDB collection and store, and
    the same Redis connection."""

    settings: CliSettings
    assume_yes: bool = False
    interactive: bool = field(default_factory=lambda: sys.stdin.isatty())
    _redis: redis.Redis | None = None
    _collection: Collection[dict[str, Any]] | None = None
    _store: Store | None = None
    _syncs: list[Sync] | None = None
    # The context of each sync by name, made on first use, and the context a sync's context was made from.
    _of_sync: dict[str, Context] = field(default_factory=dict)
    _parent: Context | None = None
    # Whether ``_store`` was opened here (and so is closed here), not handed in.
    _opened_store: bool = False

    @property
    def redis(self) -> redis.Redis:
        if self._parent is not None:
            return self._parent.redis
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
            self._opened_store = True
        return self._store

    @property
    def sync(self) -> Sync:
        """The sync these settings are for: the environment's one, unless this is the context of another sync."""
        return sync_of(self.settings)

    @property
    def syncs(self) -> list[Sync]:
        """Every sync of the deployment (VECSYNC_CONFIG's, or the environment's one); ConfigurationError (exit 2)
        for a definition file that is missing or invalid."""
        if self._parent is not None:
            return self._parent.syncs
        if self._syncs is None:
            self._syncs = load_syncs(self.settings)
        return self._syncs

    def sync_named(self, name: str) -> Sync:
        """The sync called ``name``; ConfigurationError naming the syncs there are when there is none."""
        for sync in self.syncs:
            if sync.name == name:
                return sync
        names = ", ".join(sync.name for sync in self.syncs)
        raise ConfigurationError(
            f"There is no sync named {name!r}. The syncs are: {names}; pass one of them to --sync."
        )

    def chosen_syncs(self, name: str | None) -> list[Sync]:
        """The sync ``--sync`` names, or every sync when it names none."""
        return [self.sync_named(name)] if name is not None else list(self.syncs)

    def for_sync(self, sync: Sync) -> Context:
        """The context of ``sync``. The environment's sync shares this context's MongoDB collection and store."""
        if self._parent is not None:
            return self._parent.for_sync(sync)
        child = self._of_sync.get(sync.name)
        if child is None:
            child = Context(
                settings_for(self.settings, sync),
                assume_yes=self.assume_yes,
                interactive=self.interactive,
                _parent=self,
            )
            if not sync.structured:
                child._collection, child._store = self._collection, self._store
            self._of_sync[sync.name] = child
        child.assume_yes = child.assume_yes or self.assume_yes
        return child

    def release_store(self) -> None:
        """Close the store if it was opened here, so that a long-running command (``status --watch``) does not hold
        an embedded store between two looks at it: the upserter must be able to open it."""
        if self._opened_store and self._store is not None:
            self._store.close()
            self._store, self._opened_store = None, False

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
        for child in self._of_sync.values():
            child.release_store()
            if child._collection is not None and child._collection is not self._collection:
                child._collection.database.client.close()
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
