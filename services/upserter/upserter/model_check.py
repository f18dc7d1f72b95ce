"""The warning that the collection holds points made by another model than the entries this upserter applies."""

from __future__ import annotations

import collections
import logging

from prometheus_client import Gauge

from vecsync.messages import EmbeddedDocument, parse_version
from vecsync.vectorstore import VectorStore

log = logging.getLogger("vecsync.upserter")

OTHER_MODEL_POINTS = Gauge(
    "vecsync_upserter_other_model_points",
    "Points made by another model than the entries this upserter applies (or with none recorded), in the sample of "
    "the collection it takes at its first entry; 0 when none.",
)


class ModelCheck:
    """Warns once when the collection holds points made by another model than the entries being applied.

    Vectors of two models live in different spaces, so searches over a collection that mixes them rank badly.
    The upserter does not know its model until it applies an entry; the first such entry is compared with a sample
    of the collection taken then, before this upserter wrote anything.
    """

    SAMPLE = 1000

    def __init__(self, store: VectorStore) -> None:
        self.store = store
        self.done = False

    def check(self, documents: list[EmbeddedDocument]) -> None:
        if self.done:
            return
        if not documents:
            return
        # The newest entry's model is the one the embedder-workers use now.
        newest = max(documents, key=lambda doc: parse_version(doc.version))
        model = (newest.payload or {}).get("model")
        page, _next = self.store.scroll(limit=self.SAMPLE, offset=None, fields=["model"])
        self.done = True
        counts = collections.Counter(payload.get("model") for payload in page.values())
        others = {name: count for name, count in counts.items() if name != model}
        OTHER_MODEL_POINTS.set(sum(others.values()))
        if others:
            found = ", ".join(
                f"{n} by {name!r}" if name else f"{n} with no model recorded" for name, n in others.items()
            )
            log.warning(
                "Qdrant collection %r holds points made by another model than %r, the model of the entries this "
                "upserter applies: %s, in a sample of %d points. Searches mix vectors of different models until "
                "those points are embedded again: run `vecsync verify --repair`.",
                self.store.collection,
                model,
                found,
                len(page),
            )
