"""Dead letters: what an entry that cannot be processed becomes in the dead-letter stream of its stream."""

from __future__ import annotations

import json
import time

from vecsync.redaction import redact


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
