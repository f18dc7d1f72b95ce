"""Turning BSON values into plain JSON, so that no later stage needs a BSON library."""

from __future__ import annotations

import base64
import datetime
import math
import uuid
from typing import Any

from bson import ObjectId, json_util
from bson.binary import Binary
from bson.datetime_ms import DatetimeMS
from bson.json_util import CANONICAL_JSON_OPTIONS


def mongo_id_of(value: Any) -> str:
    """The id string of a document: an ObjectId's 24 hex digits, a string as is, else canonical Extended JSON."""
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, str):
        return value
    return json_util.dumps(value, json_options=CANONICAL_JSON_OPTIONS)


def to_plain(value: Any) -> Any:
    """``value`` with every BSON type replaced by a JSON one: dates become ISO 8601 strings in UTC."""
    if isinstance(value, dict):
        return {str(key): to_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(item) for item in value]
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, datetime.datetime):
        return _iso(value)
    if isinstance(value, DatetimeMS):
        # Outside the years Python's datetime can hold: keep the instant as milliseconds.
        return {"$date": int(value)}
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Binary) and value.subtype in (3, 4):
        return str(value.as_uuid(value.subtype))
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return str(value)  # ObjectId, Decimal128, Timestamp, Regex, Code and friends


def _iso(value: datetime.datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)
    return value.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")
