"""The shared consumer loop against a real Redis: acks, retries, reclaims, dead letters, stopping."""

from __future__ import annotations

import json
import threading
import time

import pytest
import redis

from vecsync.batch import Batch
from vecsync.consumer import StreamConsumer
from vecsync.consumer_groups import ensure_group
from vecsync.errors import PermanentError, TransientError
from vecsync.settings import ConsumerSettings

STREAM, GROUP, OUT = "in", "workers", "out"


def settings(**overrides: object) -> ConsumerSettings:
    values = {"consumer_name": "c1", "block_ms": 20, "backoff_initial_s": 0.01, "backoff_max_s": 0.02, **overrides}
    return ConsumerSettings(**values)  # type: ignore[arg-type]


def consumer(client: redis.Redis, handler, **overrides: object) -> StreamConsumer:  # type: ignore[no-untyped-def]
    return StreamConsumer(
        client, stage="test", stream=STREAM, group=GROUP, handler=handler, settings=settings(**overrides)
    )


def add(client: redis.Redis, *values: str) -> list[str]:
    return [client.xadd(STREAM, {"value": value}) for value in values]


def copy_to_out(batch: Batch) -> None:
    for entry in batch.entries:
        batch.tx.xadd(OUT, entry.fields)


def pending(client: redis.Redis) -> int:
    return int(client.xpending(STREAM, GROUP)["pending"])


def dead_letters(client: redis.Redis) -> list[dict[str, str]]:
    return [fields for _id, fields in client.xrange(STREAM + ":dlq")]


def test_output_and_ack_commit_together(redis_client: redis.Redis) -> None:
    add(redis_client, "a", "b", "c")
    consumer(redis_client, copy_to_out).run(drain=True)
    assert [f["value"] for _id, f in redis_client.xrange(OUT)] == ["a", "b", "c"]
    assert pending(redis_client) == 0


def test_transient_errors_are_retried_and_never_dead_lettered(redis_client: redis.Redis) -> None:
    add(redis_client, "a", "b")
    failures = iter([TransientError("down"), TransientError("still down")])

    def flaky(batch: Batch) -> None:
        error = next(failures, None)
        if error:
            raise error
        copy_to_out(batch)

    consumer(redis_client, flaky).run(drain=True)
    assert redis_client.xlen(OUT) == 2
    assert dead_letters(redis_client) == []
    assert pending(redis_client) == 0


def test_bad_input_is_dead_lettered_at_once_and_the_rest_flows(redis_client: redis.Redis) -> None:
    ids = add(redis_client, "good", "poison", "good too")

    def handler(batch: Batch) -> None:
        for entry in batch.entries:
            if entry.fields["value"] == "poison":
                raise PermanentError("poison is not a value")
            batch.tx.xadd(OUT, entry.fields)

    consumer(redis_client, handler).run(drain=True)
    assert [f["value"] for _id, f in redis_client.xrange(OUT)] == ["good", "good too"]
    [letter] = dead_letters(redis_client)
    assert letter["entry_id"] == ids[1]
    assert letter["error"] == "poison is not a value"
    assert json.loads(letter["fields"]) == {"value": "poison"}
    assert letter["stream"] == STREAM and letter["group"] == GROUP and letter["deliveries"] == "1"
    assert pending(redis_client) == 0


def test_rejected_entries_go_to_the_dlq_with_the_batch(redis_client: redis.Redis) -> None:
    add(redis_client, "ok", "bad")

    def handler(batch: Batch) -> None:
        for entry in batch.entries:
            if entry.fields["value"] == "bad":
                batch.reject(entry, "bad value")
            else:
                batch.tx.xadd(OUT, entry.fields)

    consumer(redis_client, handler).run(drain=True)
    assert redis_client.xlen(OUT) == 1
    assert [letter["error"] for letter in dead_letters(redis_client)] == ["bad value"]


def test_unknown_failure_is_redelivered_then_dead_lettered(redis_client: redis.Redis) -> None:
    add(redis_client, "ok", "crashes")
    attempts = []

    def handler(batch: Batch) -> None:
        for entry in batch.entries:
            if entry.fields["value"] == "crashes":
                attempts.append(entry.deliveries)
                raise RuntimeError("bug")
            batch.tx.xadd(OUT, entry.fields)

    consumer(redis_client, handler, claim_idle_ms=1, max_deliveries=3).run(drain=True)
    assert redis_client.xlen(OUT) == 1
    assert attempts == [1, 1, 2, 3]  # in the batch, alone, then two redeliveries
    [letter] = dead_letters(redis_client)
    assert letter["error"] == "RuntimeError: bug"
    assert letter["deliveries"] == "3"
    assert pending(redis_client) == 0


def test_entries_of_a_dead_consumer_are_reclaimed(redis_client: redis.Redis) -> None:
    ensure_group(redis_client, STREAM, GROUP)
    add(redis_client, "a", "b")
    # Another consumer took the entries and died before acking them.
    redis_client.xreadgroup(GROUP, "dead", {STREAM: ">"}, count=10)
    time.sleep(0.01)  # they must sit idle longer than CLAIM_IDLE_MS
    consumer(redis_client, copy_to_out, claim_idle_ms=1).run(drain=True)
    assert redis_client.xlen(OUT) == 2
    assert pending(redis_client) == 0


def test_entries_delivered_too_often_are_dead_lettered_on_reclaim(redis_client: redis.Redis) -> None:
    ensure_group(redis_client, STREAM, GROUP)
    add(redis_client, "kills its consumer")
    # A consumer read it and crashed, then crashed twice more re-reading it after restarts.
    for start in (">", "0", "0"):
        redis_client.xreadgroup(GROUP, "dead", {STREAM: start}, count=10)
    time.sleep(0.01)
    handled = []
    consumer(redis_client, lambda b: handled.extend(b.entries), claim_idle_ms=1, max_deliveries=3).run(drain=True)
    assert handled == []
    [letter] = dead_letters(redis_client)
    assert "MAX_DELIVERIES=3" in letter["error"]
    assert pending(redis_client) == 0


def test_a_restarted_consumer_first_finishes_its_own_pending_entries(redis_client: redis.Redis) -> None:
    ensure_group(redis_client, STREAM, GROUP)
    add(redis_client, "a")
    redis_client.xreadgroup(GROUP, "c1", {STREAM: ">"}, count=10)  # c1 read it, then was killed
    add(redis_client, "b")
    consumer(redis_client, copy_to_out).run(drain=True)
    assert [f["value"] for _id, f in redis_client.xrange(OUT)] == ["a", "b"]


def test_stop_leaves_unfinished_entries_pending(redis_client: redis.Redis) -> None:
    add(redis_client, "a")
    called = threading.Event()

    def dependency_down(batch: Batch) -> None:
        called.set()
        raise TransientError("down")

    loop = consumer(redis_client, dependency_down, backoff_initial_s=10)
    thread = threading.Thread(target=loop.run)
    thread.start()
    assert called.wait(5)
    loop.stop()
    thread.join(5)
    assert not thread.is_alive(), "the loop stops promptly, even while backing off"
    assert pending(redis_client) == 1 and dead_letters(redis_client) == []


@pytest.mark.parametrize("batch_size", [1, 64])
def test_every_entry_is_processed_once_in_order(redis_client: redis.Redis, batch_size: int) -> None:
    add(redis_client, *[str(i) for i in range(200)])
    consumer(redis_client, copy_to_out, batch_size=batch_size).run(drain=True)
    assert [f["value"] for _id, f in redis_client.xrange(OUT)] == [str(i) for i in range(200)]


def test_a_stopped_consumer_that_holds_nothing_leaves_its_group(redis_client: redis.Redis) -> None:
    add(redis_client, "a")
    loop = consumer(redis_client, copy_to_out)
    thread = threading.Thread(target=loop.run)
    thread.start()
    deadline = time.monotonic() + 5
    while redis_client.xlen(OUT) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    loop.stop()
    thread.join(5)
    assert redis_client.xinfo_consumers(STREAM, GROUP) == []


def batch_sizes_when_entries_trickle_in(client: redis.Redis, **overrides: object) -> list[int]:
    """The batch sizes a running consumer handles when one entry arrives, then two more 0.1 s later."""
    ensure_group(client, STREAM, GROUP)
    sizes: list[int] = []

    def record(batch: Batch) -> None:
        sizes.append(len(batch.entries))
        copy_to_out(batch)

    loop = consumer(client, record, batch_size=10, block_ms=2000, **overrides)
    thread = threading.Thread(target=loop.run)
    thread.start()
    add(client, "a")
    time.sleep(0.1)  # the read has returned "a" alone
    add(client, "b", "c")
    deadline = time.monotonic() + 5
    while client.xlen(OUT) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    loop.stop()
    thread.join(5)
    return sizes


def test_linger_tops_up_a_partial_batch(redis_client: redis.Redis) -> None:
    assert batch_sizes_when_entries_trickle_in(redis_client, linger_ms=300) == [3]


def test_without_linger_a_partial_batch_is_handled_at_once(redis_client: redis.Redis) -> None:
    sizes = batch_sizes_when_entries_trickle_in(redis_client)
    assert sizes[0] == 1 and sum(sizes) == 3, sizes  # "a" was handled without waiting for the others


def test_a_busy_stream_is_trimmed_by_volume_not_only_by_the_clock(redis_client: redis.Redis) -> None:
    add(redis_client, *[str(i) for i in range(3000)])
    # Trimming once a minute would let a fast stage pile up a minute of acknowledged entries beyond retention.
    consumer(redis_client, copy_to_out, stream_retention_count=100, trim_interval_s=3600).run(drain=True)
    assert redis_client.xlen(STREAM) <= 100 + 1000


def test_an_idle_entry_behind_many_busy_ones_is_reclaimed(redis_client: redis.Redis) -> None:
    ensure_group(redis_client, STREAM, GROUP)
    busy = add(redis_client, *[f"busy {i}" for i in range(2000)])
    [idle] = add(redis_client, "left by a dead consumer")
    # Live consumers hold the first 2,000 entries and keep renewing them; a dead one holds the last, idle for an hour.
    redis_client.xreadgroup(GROUP, "dead", {STREAM: ">"})
    for index, entry_id in enumerate(busy):
        redis_client.xclaim(STREAM, GROUP, f"live {index % 8}", 0, [entry_id], justid=True)
    redis_client.xclaim(STREAM, GROUP, "dead", 0, [idle], idle=3_600_000, justid=True)
    handled: list[str] = []
    consumer(redis_client, lambda batch: handled.extend(e.id for e in batch.entries), batch_size=10).run(drain=True)
    # XAUTOCLAIM looks at no more than 10 x COUNT = 100 pending entries per call: only the cursor reaches it.
    assert handled == [idle]
    assert pending(redis_client) == len(busy)


class TakesAnEntryBeforeTheLeave(redis.Redis):
    """A client that, once armed, lets a consumer of the same name take an entry just before the stopped consumer
    removes itself from the group (XGROUP DELCONSUMER, or the script that runs it): a restart racing the leave."""

    armed = False
    url = ""
    taken: list[str]

    def execute_command(self, *args: object, **options: object) -> object:
        command = str(args[0]).upper()
        if self.armed and (command.startswith("XGROUP DELCONSUMER") or command in ("EVALSHA", "EVAL")):
            self.armed = False
            with redis.Redis.from_url(self.url, decode_responses=True) as restarted:
                self.taken.append(restarted.xadd(STREAM, {"value": "b"}))
                restarted.xreadgroup(GROUP, "c1", {STREAM: ">"}, count=1)
        return super().execute_command(*args, **options)


def test_leaving_the_group_never_discards_entries_a_consumer_of_the_same_name_took(redis_url: str) -> None:
    client = TakesAnEntryBeforeTheLeave.from_url(redis_url, decode_responses=True)
    client.url, client.taken = redis_url, []
    client.flushall()
    add(client, "a")
    loop = consumer(client, copy_to_out)
    thread = threading.Thread(target=loop.run)
    thread.start()
    deadline = time.monotonic() + 5
    while client.xlen(OUT) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    client.armed = True
    loop.stop()
    thread.join(5)
    assert not client.armed, "the consumer tried to leave its group"
    mine = client.xpending_range(STREAM, GROUP, "-", "+", 10, consumername="c1")
    assert [item["message_id"] for item in mine] == client.taken, "the restarted consumer still holds what it took"
    client.close()
