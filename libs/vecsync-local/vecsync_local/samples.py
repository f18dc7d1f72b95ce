"""Which sample documents ``make run`` loads, into which MongoDB collections, and reading them.

Samples only ever go into an empty collection, so neither a second run nor a user's own documents are added to.
Without VECSYNC_CONFIG, SAMPLE_DATA goes into the environment's one sync (MONGO_DATABASE.MONGO_COLLECTION), as
it always did. With VECSYNC_CONFIG the collections are the definition file's, so samples go only where SAMPLE_SYNCS
says: a comma list of sync names, each loaded from SAMPLE_DATA, or from its own file as NAME=FILE (for
samples/syncs.example.yaml: ``tickets,articles=samples/kb_articles.jsonl``).
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vecsync.errors import ConfigurationError
from vecsync.sync import Sync


@dataclass(frozen=True)
class SampleLoad:
    """One file of sample documents, for the collection of one sync."""

    sync: Sync
    path: Path


def planned_loads(syncs: list[Sync], config: Path | None, sample_syncs: str, sample_data: Path) -> list[SampleLoad]:
    """What to load: SAMPLE_DATA into the environment's one sync without a definition file (``config``), else the
    syncs SAMPLE_SYNCS names. Every sync named and every file is checked here, before anything starts."""
    if config is None:
        if sample_syncs.strip():
            raise ConfigurationError(
                f"SAMPLE_SYNCS={sample_syncs!r} names syncs of a definition file, but VECSYNC_CONFIG is not set. "
                "Set VECSYNC_CONFIG too, or leave SAMPLE_SYNCS out to load SAMPLE_DATA into "
                "MONGO_DATABASE.MONGO_COLLECTION."
            )
        return [SampleLoad(syncs[0], sample_data)]
    by_name = {sync.name: sync for sync in syncs}
    loads = []
    for part in sample_syncs.split(","):
        name, _, file = (text.strip() for text in part.partition("="))
        if not name:
            continue
        if name not in by_name:
            raise ConfigurationError(
                f"SAMPLE_SYNCS names sync {name!r}, which VECSYNC_CONFIG {config} does not define. Its syncs are: "
                f"{', '.join(by_name)}."
            )
        path = Path(file) if file else sample_data
        if not path.is_file():
            raise ConfigurationError(
                f"SAMPLE_SYNCS loads sync {name!r} from {path}, which does not exist; run from the repository root, "
                "or name the file as NAME=FILE."
            )
        loads.append(SampleLoad(by_name[name], path))
    return loads


def read_samples(path: Path) -> list[dict[str, Any]]:
    """The documents of a JSON Lines file, each ``date`` an ISO 8601 string made a datetime (as MongoDB holds it)."""
    if not path.exists():
        raise ConfigurationError(f"SAMPLE_DATA={path} does not exist; run from the repository root or set SAMPLE_DATA.")
    documents = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            document = json.loads(line)
            if "date" in document:
                document["date"] = datetime.datetime.fromisoformat(document["date"].replace("Z", "+00:00"))
        except ValueError as exc:
            raise ConfigurationError(f"{path}:{number} is not a valid sample document: {exc}") from None
        documents.append(document)
    return documents
