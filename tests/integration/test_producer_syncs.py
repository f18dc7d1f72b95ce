"""The producer of several syncs (VECSYNC_CONFIG): each sync's stream, state keys and filter, in one process."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest
import redis
import requests
from bson import ObjectId
from pymongo.errors import OperationFailure

from producer.main import run_producers
from producer.service import Producer
from producer.settings import ProducerSettings
from tests.support.servers import BIN, free_port, wait_for
from vecsync.bson_codec import mongo_id_of
from vecsync.stage1 import publish_current_states
from vecsync.sync import Sync
from vecsync.syncs import load_syncs, settings_for

_names = itertools.count()

DEFINITIONS = """
syncs:
  - name: tickets
    mongo_database: support
    mongo_collection: tickets_{number}
    filter: {{status: {{$ne: spam}}}}
    text_fields: [subject, body.lines]
    payload_fields: [status, meta.priority, tags]
    payload_indexes: {{meta.priority: integer}}
  - name: articles
    mongo_database: kb
    mongo_collection: articles_{number}
    text_fields: [title, body.text]
    payload_fields: [author.name]
    qdrant_collection: kb_articles
"""


class Syncs:
    """Two syncs over two collections in two databases of the stand-in, and the settings of the producer of both."""

    def __init__(self, mongo_uri: str, redis_url: str, client: pymongo.MongoClient[dict[str, Any]], tmp: Path) -> None:
        number = next(_names)
        self.mongo_uri, self.redis_url = mongo_uri, redis_url
        self.config = tmp / "syncs.yaml"
        self.config.write_text(DEFINITIONS.format(number=number))
        # Collection names of their own per test: the stand-in keeps one table per collection name, whatever the
        # database, and its change history with it.
        self.tickets = client["support"][f"tickets_{number}"]
        self.articles = client["kb"][f"articles_{number}"]

    def settings(self, **overrides: Any) -> ProducerSettings:
        values: dict[str, Any] = {
            "mongo_uri": self.mongo_uri,
            "redis_url": self.redis_url,
            "vecsync_config": self.config,
            "max_await_ms": 50,
            "backoff_initial_s": 0.01,
            "backoff_max_s": 0.05,
            **overrides,
        }
        return ProducerSettings(**values)

    def producers(self, client: redis.Redis, **overrides: Any) -> dict[str, Producer]:
        settings = self.settings(**overrides)
        collections = {"tickets": self.tickets, "articles": self.articles}
        return {
            sync.name: Producer(settings_for(settings, sync), client, collections[sync.name])
            for sync in load_syncs(settings)
        }

    def run(self, client: redis.Redis) -> None:
        """Each sync's producer once, until no change waits."""
        for producer in self.producers(client).values():
            producer.run(drain=True)

    def env(self, metrics_port: int) -> dict[str, str]:
        return {
            **os.environ,
            "VECSYNC_CONFIG": str(self.config),
            "MONGO_URI": self.mongo_uri,
            "REDIS_URL": self.redis_url,
            "METRICS_HOST": "127.0.0.1",
            "METRICS_PORT": str(metrics_port),
            "MAX_AWAIT_MS": "50",
        }


@pytest.fixture
def syncs(mongo_uri: str, redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> Iterator[Syncs]:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_uri)
    yield Syncs(mongo_uri, redis_url, client, tmp_path)
    client.close()


def entries(client: redis.Redis, stream: str) -> list[tuple[str, str]]:
    return [(fields["mongo_id"], fields["op"]) for _id, fields in client.xrange(stream)]


def documents(client: redis.Redis, stream: str) -> dict[str, Any]:
    """The last state of each document in ``stream``, as the entries carry it (None for a delete)."""
    last: dict[str, Any] = {}
    for _id, fields in client.xrange(stream):
        last[fields["mongo_id"]] = json.loads(fields["doc"]) if fields["op"] == "upsert" else None
    return last


def seed(syncs: Syncs) -> ObjectId:
    ticket = ObjectId()
    syncs.tickets.insert_many(
        [
            {"_id": ticket, "subject": "printer", "body": {"lines": ["jams", "again"]}, "status": "open",
             "meta": {"priority": 2}, "tags": ["hw", "office"]},
            {"_id": "T-2", "subject": "buy now", "body": {"lines": ["cheap"]}, "status": "spam"},
            {"_id": "T-3", "subject": "login", "body": {"lines": ["fails"]}, "status": "closed",
             "meta": {"priority": 1}, "tags": []},
        ]
    )  # fmt: skip
    syncs.articles.insert_many(
        [
            {"_id": "howto", "title": "Printers", "body": {"text": "Clear the jam."}, "author": {"name": "ops"}},
            {"_id": ObjectId(), "title": "Logins", "body": {"text": "Reset it."}, "author": {"name": "it"}},
        ]
    )
    return ticket


def test_each_sync_publishes_its_own_stream_under_its_own_keys(syncs: Syncs, redis_client: redis.Redis) -> None:
    ticket = seed(syncs)
    syncs.run(redis_client)
    tickets = documents(redis_client, "raw_document_changes.tickets")
    assert set(tickets) == {mongo_id_of(ticket), "T-3"}, "the snapshot skips the document outside the filter"
    assert tickets[mongo_id_of(ticket)]["meta"] == {"priority": 2}
    assert tickets[mongo_id_of(ticket)]["body"] == {"lines": ["jams", "again"]}
    articles = documents(redis_client, "raw_document_changes.articles")
    assert len(articles) == 2 and "howto" in articles
    sources = {fields["source"] for _id, fields in redis_client.xrange("raw_document_changes.articles")}
    assert sources == {f"kb.{syncs.articles.name}"}, "point ids stay those of the collection"
    for name in ("tickets", "articles"):
        assert redis_client.get(f"vecsync:producer:{name}:resume_token"), f"the state of {name} is its own"
    assert not redis_client.exists("raw_document_changes"), "the seed's stream is not written"
    assert not redis_client.keys("vecsync:producer:support.*"), "the state is named after the sync"


def test_an_update_out_of_the_filter_deletes_and_back_in_upserts(syncs: Syncs, redis_client: redis.Redis) -> None:
    ticket = seed(syncs)
    syncs.run(redis_client)
    stream = "raw_document_changes.tickets"
    published = len(entries(redis_client, stream))
    syncs.tickets.update_one({"_id": ticket}, {"$set": {"status": "spam"}})
    syncs.tickets.update_one({"_id": "T-2"}, {"$set": {"status": "open"}})
    syncs.run(redis_client)
    assert entries(redis_client, stream)[published:] == [(mongo_id_of(ticket), "delete"), ("T-2", "upsert")]
    syncs.tickets.update_one({"_id": ticket}, {"$set": {"status": "open"}})
    syncs.tickets.delete_one({"_id": "T-3"})
    syncs.run(redis_client)
    assert entries(redis_client, stream)[published + 2 :] == [(mongo_id_of(ticket), "upsert"), ("T-3", "delete")]
    assert entries(redis_client, "raw_document_changes.articles")[2:] == [], "the other sync saw nothing"


def test_a_restart_resumes_each_sync_from_its_own_token(syncs: Syncs, redis_client: redis.Redis) -> None:
    seed(syncs)
    syncs.run(redis_client)
    tokens = {name: redis_client.get(f"vecsync:producer:{name}:resume_token") for name in ("tickets", "articles")}
    syncs.articles.insert_one({"_id": "new", "title": "New", "body": {"text": "n"}})
    syncs.run(redis_client)
    assert entries(redis_client, "raw_document_changes.articles")[2:] == [("new", "upsert")], "no second snapshot"
    assert len(entries(redis_client, "raw_document_changes.tickets")) == 2
    assert redis_client.get("vecsync:producer:tickets:resume_token") == tokens["tickets"]
    assert redis_client.get("vecsync:producer:articles:resume_token") != tokens["articles"]


def test_recoveries_publish_under_the_sync_filter(syncs: Syncs, redis_client: redis.Redis) -> None:
    """`vecsync resync`, `verify --repair` and `dlq replay` publish through publish_current_states."""
    seed(syncs)
    syncs.run(redis_client)
    settings = syncs.settings()
    tickets: Sync = next(sync for sync in load_syncs(settings) if sync.name == "tickets")
    publish_current_states(
        redis_client,
        settings_for(settings, tickets),
        syncs.tickets,
        tickets.source,
        ["T-2", "T-3"],
        projection=None,
    )
    assert entries(redis_client, "raw_document_changes.tickets")[-2:] == [("T-2", "delete"), ("T-3", "upsert")]


class BrokenWatch:
    """A collection whose watch() fails with an error the producer does not retry."""

    def __init__(self, collection: Any) -> None:
        self._collection = collection

    def watch(self, **kwargs: Any) -> Any:
        raise OperationFailure("injected", code=2)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._collection, name)


def test_a_failing_sync_stops_the_others(syncs: Syncs, redis_client: redis.Redis) -> None:
    settings = syncs.settings()
    stopping = threading.Event()
    by_name = {sync.name: sync for sync in load_syncs(settings)}
    producers = [
        Producer(settings_for(settings, by_name["tickets"]), redis_client, BrokenWatch(syncs.tickets), stopping),
        Producer(settings_for(settings, by_name["articles"]), redis_client, syncs.articles, stopping),
    ]
    started = time.monotonic()
    with pytest.raises(OperationFailure, match="injected"):
        run_producers(producers, stopping)
    assert stopping.is_set() and time.monotonic() - started < 20


def test_an_idle_sync_backs_off_its_polls(syncs: Syncs, redis_client: redis.Redis, monkeypatch: Any) -> None:
    """The stand-in answers an empty read at once: an idle stream must read less and less often."""
    reads: list[float] = []
    real = Producer._next_events

    def counting(self: Producer, stream: Any, **kwargs: Any) -> Any:
        reads.append(time.monotonic())
        return real(self, stream, **kwargs)

    monkeypatch.setattr(Producer, "_next_events", counting)
    producer = syncs.producers(redis_client, idle_poll_ms=20, idle_poll_max_ms=200)["articles"]
    thread = threading.Thread(target=producer.run)
    thread.start()
    try:
        wait_for(lambda: reads, what="the first read")
        time.sleep(2.0)
        syncs.articles.insert_one({"_id": "late", "title": "t"})
        wait_for(lambda: entries(redis_client, "raw_document_changes.articles"), what="the change after the quiet")
        in_quiet = len(reads)
        time.sleep(0.1)
        after_event = len(reads) - in_quiet
    finally:
        producer.stopping.set()
        thread.join(10)
    # At 20 ms apart, two seconds are 100 reads; backing off after 200 ms of quiet, about 20.
    assert in_quiet < 40, f"{in_quiet} reads in two idle seconds"
    assert after_event >= 3, "after an event the stream is read every IDLE_POLL_MS again"


def test_one_process_follows_every_sync(syncs: Syncs, redis_client: redis.Redis, tmp_path: Path) -> None:
    seed(syncs)
    port, log = free_port(), tmp_path / "producer.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [str(BIN / "vecsync-producer")], env=syncs.env(port), stdout=subprocess.DEVNULL, stderr=stderr
        )
    try:
        wait_for(lambda: len(entries(redis_client, "raw_document_changes.articles")) == 2, what="the articles")
        wait_for(lambda: len(entries(redis_client, "raw_document_changes.tickets")) == 2, what="the tickets")
        syncs.tickets.update_one({"_id": "T-3"}, {"$set": {"status": "spam"}})
        wait_for(lambda: entries(redis_client, "raw_document_changes.tickets")[-1] == ("T-3", "delete"), what="out")
        wait_for(lambda: requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).ok, what="healthy")
        metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
        for name in ("tickets", "articles"):
            assert f'vecsync_producer_resume_token_age_seconds{{sync="{name}"}}' in metrics
            assert f'vecsync_producer_snapshot_running{{sync="{name}"}} 0.0' in metrics
        assert 'vecsync_producer_entries_published_total{op="delete",sync="tickets"} 1.0' in metrics
        assert 'stream="raw_document_changes.tickets"' in metrics, "each sync's stage 1 stream is measured"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, log.read_text()


def test_an_invalid_definition_exits_2_before_connecting(syncs: Syncs, tmp_path: Path) -> None:
    syncs.config.write_text("syncs:\n  - name: a\n    mongo_collection: c\n    text_fields: []\n    filtr: {}\n")
    env = syncs.env(free_port()) | {"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}  # nobody listens there
    done = subprocess.run([str(BIN / "vecsync-producer")], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "key 'text_fields' is empty" in done.stderr and "'filtr' is not known" in done.stderr
    assert "not reachable" not in done.stderr, "nothing connects before the definitions are read"
