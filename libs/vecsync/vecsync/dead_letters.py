"""Dead letters: what an entry that cannot be processed becomes in the dead-letter stream of its stream."""

from __future__ import annotations

import json
import logging
import time

import redis

from vecsync import metrics
from vecsync.batch import Entry
from vecsync.constants import dlq_stream
from vecsync.consumer_context import ConsumerContext
from vecsync.redaction import redact

# The consumer loop's lines, under the logger name they have always had.
log = logging.getLogger("vecsync.consumer")


def dead_letter_fields(
    *, stream: str, group: str, entry_id: str, fields: dict[str, str], error: str, deliveries: int, consumer: str
) -> dict[str, str]:
    """The fields of a dead-letter entry: everything needed to understand and replay it.

    The reason is redacted (vecsync.redaction): it is stored in Redis and shown by `vecsync dlq`, past every log
    formatter.
    """
    return {
        "stream": stream,
        "group": group,
        "entry_id": entry_id,
        "fields": json.dumps(fields, ensure_ascii=False),
        "error": redact(error),
        "deliveries": str(deliveries),
        "consumer": consumer,
        "failed_at": repr(time.time()),
    }


class DeadLetters:
    """How a consumer loop dead-letters the entries of its stream: always together with their ack."""

    def __init__(self, context: ConsumerContext) -> None:
        self.context = context

    def queue(self, tx: redis.client.Pipeline, entry: Entry, reason: str) -> None:
        """Queue the dead letter of ``entry`` on ``tx``, the transaction that acknowledges it."""
        tx.xadd(dlq_stream(self.context.stream), self._fields(entry, reason))

    def send(self, entry: Entry, reason: str) -> None:
        """Dead-letter ``entry`` now, in one MULTI/EXEC with its ack."""
        context = self.context
        tx = context.client.pipeline(transaction=True)
        self.queue(tx, entry, reason)
        tx.xack(context.stream, context.group, entry.id)
        tx.execute()
        log.error("%s dead-lettered entry %s: %s", context.stage, entry.id, reason)
        metrics.MESSAGES_DEAD_LETTERED.labels(**context.labels).inc()

    def _fields(self, entry: Entry, reason: str) -> dict[str, str]:
        return dead_letter_fields(
            stream=self.context.stream,
            group=self.context.group,
            entry_id=entry.id,
            fields=entry.fields,
            error=reason,
            deliveries=entry.deliveries,
            consumer=self.context.consumer,
        )
