"""A model change without downtime, end to end on the embedded default (issue 25, acceptance 1 and 2).

The local stack (every stage a process, the upserter holding the embedded store) builds its collection with
`hash-384`; then its stages restart with EMBEDDING_MODEL=all-MiniLM-L6-v2 while documents change and searches run.
The embedding-api serves both models from the start (EMBEDDING_MODELS). Afterwards every point must be the new
model's vector of its document's current text, compared point by point, and `vecsync verify` must pass.
"""

from __future__ import annotations

import json
import math
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
import pymongo.errors
import pytest
import requests

from tests.support.servers import wait_for
from tests.support.stack import drained, running_stack, stack_settings
from vecsync import reindex
from vecsync.bson_codec import mongo_id_of
from vecsync.documents import point_id
from vecsync.redis_client import connect
from vecsync.reindex import Phase
from vecsync.settings import QdrantSettings
from vecsync.store import open_vector_store
from vecsync_local.stack import LocalStack, LocalStackSettings
from vecsync_local.supervisor import Child

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "samples" / "support_tickets.jsonl"
OLD_MODEL, NEW_MODEL = "hash-384", "all-MiniLM-L6-v2"
COLLECTION = "documents"  # QDRANT_COLLECTION, as the stack leaves it
VECSYNC = str(Path(sys.executable).parent / "vecsync")
QUERIES = ("I was charged twice", "the app crashes on start", "how do I reset my password", "refund my order")


def stack_environment(settings: LocalStackSettings) -> dict[str, str]:
    """What the CLI is given to reach the stack, as an operator's shell would hold it."""
    return {
        "DATA_DIR": str(settings.data_dir),
        "REDIS_URL": settings.redis_url,
        "MONGO_URI": settings.mongo_uri,
        "EMBEDDING_URL": settings.embedding_url,
        "UPSERTER_URL": settings.upserter_url,
        # As the stages are configured once they restart: the model the collection is to be built with.
        "EMBEDDING_MODEL": NEW_MODEL,
        "PATH": "/usr/local/bin:/usr/bin:/bin",
    }


class Searches(threading.Thread):
    """Runs `vecsync search` over and over, as users do, and keeps what each returned."""

    def __init__(self, env: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.env = env
        self.done = threading.Event()
        self.results: list[tuple[float, int, int]] = []  # (time, exit status, hits)
        self.failures: list[tuple[float, str]] = []

    def run(self) -> None:
        index = 0
        while not self.done.is_set():
            query = QUERIES[index % len(QUERIES)]
            index += 1
            run = subprocess.run(
                [VECSYNC, "search", query, "--json", "--limit", "5"],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            now = time.monotonic()
            if run.returncode != 0:
                self.failures.append((now, run.stderr.strip()[-300:]))
                self.results.append((now, run.returncode, 0))
                continue
            self.results.append((now, 0, len(json.loads(run.stdout))))


class Changes(threading.Thread):
    """Updates, inserts and deletes documents while the model change runs."""

    def __init__(self, collection: Any, ids: list[Any]) -> None:
        super().__init__(daemon=True)
        self.collection = collection
        self.ids = ids
        self.done = threading.Event()
        self.made = 0

    def run(self) -> None:
        rng = random.Random(25)
        while not self.done.wait(0.05):
            try:
                self._change(rng)
            except pymongo.errors.PyMongoError:
                continue  # the stand-in dropped the connection: the client reconnects with the next change

    def _change(self, rng: random.Random) -> None:
        choice = rng.random()
        if choice < 0.6:
            target = rng.choice(self.ids)
            self.collection.update_one({"_id": target}, {"$set": {"subject": f"changed {self.made}: refund"}})
        elif choice < 0.85:
            new_id = f"new-{self.made}"
            self.collection.insert_one({"_id": new_id, "subject": f"new ticket {self.made}", "content": "help"})
            self.ids.append(new_id)
        else:
            self.collection.delete_one({"_id": self.ids.pop(rng.randrange(len(self.ids)))})
        self.made += 1


def restart_stages(stack: LocalStack, env: dict[str, str]) -> None:
    """Restart every stage with ``env`` added to its environment, upstream first, as an operator rolls out a
    configuration; the supervisor holds off meanwhile."""
    for child in stack.stages:
        child.paused = True
        child.stop()
        child.env.update(env)
        child.start()
        child.paused = False


def child_named(stack: LocalStack, name: str) -> Child:
    for child in stack.stages:
        if name in (child.env.get("CONSUMER_NAME"), child.name):
            return child
    raise KeyError(name)


def cli(env: dict[str, str], *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([VECSYNC, *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalStack]:
    """The stack, its embedding-api serving both models, its collection built with the old one."""
    monkeypatch.setenv("EMBEDDING_MODELS", f"{OLD_MODEL},{NEW_MODEL}")
    monkeypatch.setenv("EMBEDDING_MODEL", OLD_MODEL)
    settings = stack_settings(tmp_path / "data", sample_data=SAMPLES, embedding_backend="torch", embedder_workers=2)
    with running_stack(settings) as running:
        total = running.load_samples()
        running.wait_until_searchable(total)
        yield running


@pytest.fixture
def documents(stack: LocalStack) -> Iterator[Any]:
    """The stack's MongoDB collection."""
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(stack.settings.mongo_uri)
    try:
        yield client[stack.settings.mongo_database][stack.settings.mongo_collection]
    finally:
        client.close()


def served(settings: LocalStackSettings) -> reindex.Serving | None:
    client = connect(settings.redis_url)
    try:
        return reindex.read_serving(client, COLLECTION)
    finally:
        client.close()


def change_of(settings: LocalStackSettings) -> reindex.Reindex | None:
    client = connect(settings.redis_url)
    try:
        return reindex.read_reindex(client, COLLECTION)
    finally:
        client.close()


def embed(settings: LocalStackSettings, texts: list[str], model: str) -> list[list[float]]:
    vectors: list[list[float]] = []
    for start in range(0, len(texts), 64):
        body = {"texts": texts[start : start + 64], "model": model}
        response = requests.post(settings.embedding_url + "/encode_batch", json=body, timeout=120)
        response.raise_for_status()
        assert response.json()["model"] == model
        vectors += response.json()["embeddings"]
    return vectors


def assert_every_point_is_the_new_models(stack: LocalStack, collection: Any) -> None:
    """Point by point: one point per document with text, each holding the new model's vector of its text."""
    settings = stack.settings
    stack.stop_stages()  # the upserter releases the embedded store
    store = open_vector_store(QdrantSettings(qdrant_collection=COLLECTION), settings.data_dir)
    try:
        assert store.collection != COLLECTION, "the name must serve the new physical collection"
        points: dict[str, Any] = {}
        offset = None
        while True:
            page, offset = store.scroll(limit=512, offset=offset, fields=["mongo_id"])
            points.update({record.id: record for record in store.retrieve(list(page), with_vectors=True)})
            if offset is None:
                break
    finally:
        store.close()
    source = f"{settings.mongo_database}.{settings.mongo_collection}"
    with_text = [doc for doc in collection.find() if doc.get("subject") or doc.get("content")]
    expected = {point_id(source, mongo_id_of(doc["_id"])) for doc in with_text}
    assert set(points) == expected
    records = list(points.values())
    fresh = embed(settings, [record.payload["text"] for record in records], NEW_MODEL)
    for record, vector in zip(records, fresh, strict=True):
        assert record.payload["model"] == NEW_MODEL
        cosine = sum(a * b for a, b in zip(record.vector, vector, strict=True))
        assert math.isclose(cosine, 1.0, abs_tol=1e-3), f"point {record.id} is not the new model's vector"


def finish_changes(stack: LocalStack, changes: Changes) -> None:
    changes.done.set()
    changes.join(30)
    wait_for(lambda: drained(stack.settings), timeout=300, interval=0.5, what="the stages to drain")


@pytest.mark.slow
def test_a_model_change_under_load_never_empties_search(stack: LocalStack, documents: Any) -> None:
    settings = stack.settings
    env = stack_environment(settings)
    collection = documents
    before = served(settings)
    assert before is not None and before.model == OLD_MODEL
    searches = Searches(env)
    changes = Changes(collection, [doc["_id"] for doc in collection.find({}, {"_id": 1})])
    searches.start()
    changes.start()
    time.sleep(3)
    restarted_at = time.monotonic()
    restart_stages(stack, {"EMBEDDING_MODEL": NEW_MODEL})
    upserter_back = time.monotonic()
    waited = cli(env, "reindex", "--wait")
    assert waited.returncode == 0, waited.stdout + waited.stderr
    assert NEW_MODEL in waited.stdout
    time.sleep(3)  # searches after the switch too
    searches.done.set()
    searches.join(120)
    finish_changes(stack, changes)
    after = served(settings)
    assert after is not None and after.model == NEW_MODEL and after.collection != before.collection
    assert searches.results, "no search ran"
    assert all(hits > 0 for _at, code, hits in searches.results if code == 0), "a search came back empty"
    # A search fails only while the process serving it (the upserter, holding the embedded store) restarts.
    failed_late = [(at, said) for at, said in searches.failures if not restarted_at - 1 <= at <= upserter_back + 30]
    assert not failed_late, failed_late
    verified = cli(env, "verify", "--yes")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert_every_point_is_the_new_models(stack, collection)


@pytest.mark.slow
def test_a_model_change_survives_a_kill_of_each_stage(stack: LocalStack, documents: Any) -> None:
    settings = stack.settings
    env = stack_environment(settings)
    collection = documents
    changes = Changes(collection, [doc["_id"] for doc in collection.find({}, {"_id": 1})])
    changes.start()
    restart_stages(stack, {"EMBEDDING_MODEL": NEW_MODEL})
    wait_for(lambda: change_of(settings) is not None, timeout=120, what="the model change to start")
    for name in ("producer", "embedder-1", "upserter-1"):
        change = change_of(settings)
        assert change is not None and change.phase is Phase.BUILDING, "the build ended before every kill"
        process = child_named(stack, name).process
        assert process is not None
        process.send_signal(signal.SIGKILL)
        time.sleep(2)
    waited = cli(env, "reindex", "--wait")
    assert waited.returncode == 0, waited.stdout + waited.stderr
    finish_changes(stack, changes)
    verified = cli(env, "verify", "--yes")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert_every_point_is_the_new_models(stack, collection)


@pytest.mark.slow
def test_an_aborted_model_change_leaves_the_served_collection_untouched(stack: LocalStack) -> None:
    settings = stack.settings
    env = stack_environment(settings)
    before = served(settings)
    assert before is not None
    restart_stages(stack, {"EMBEDDING_MODEL": NEW_MODEL})
    wait_for(lambda: change_of(settings) is not None, timeout=120, what="the model change to start")
    change = change_of(settings)
    assert change is not None
    aborted = cli(env, "reindex", "--abort", "--yes")
    assert aborted.returncode == 0, aborted.stdout + aborted.stderr
    assert change.collection in aborted.stdout
    waited = cli(env, "reindex", "--wait")
    assert waited.returncode != 0, "--wait must report the abort"
    assert served(settings) == before
    assert not (settings.data_dir / "qdrant" / change.collection).exists(), "the new collection must be dropped"
    found = cli(env, "search", "I was charged twice", "--json")
    assert found.returncode == 0 and json.loads(found.stdout), found.stderr
    assert all(hit["payload"]["model"] == OLD_MODEL for hit in json.loads(found.stdout))
