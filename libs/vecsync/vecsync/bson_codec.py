"""How BSON values are written in the pipeline: a document's id string (and back), a scan's position, and a
document as plain JSON.

Every writer of stage 1 and every reader of MongoDB goes through these, so that one document always has one id
string, and with it one point (docs/design.md, "Point ids and payload").
"""

from __future__ import annotations

import base64
import datetime
import json
import math
import re
import uuid
from typing import Any

from bson import ObjectId, json_util
from bson.binary import Binary
from bson.datetime_ms import DatetimeMS
from bson.json_util import CANONICAL_JSON_OPTIONS


def mongo_id_of(value: Any) -> str:
    """The id string of a document, one per _id value and type (``id_of`` reads it back).

    An ObjectId is its 24 hex digits; a string is itself, unless ``id_of`` would read it as another value (24
    lowercase hex digits would be an ObjectId, ``true`` a boolean, ``{...}`` Extended JSON, ``"..."`` a quoted
    string): then it is quoted as a JSON string, ``"65f0c0ffee0000000000abcd"``. Every other _id is its canonical
    Extended JSON. So no two documents share an id string, and with it a point (docs/design.md, "Point ids and
    payload").
    """
    value = canonical_id(value)
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, str):
        return value if _reads_as_itself(value) else json.dumps(value, ensure_ascii=False)
    if isinstance(value, uuid.UUID):  # decoded with a uuidRepresentation: encode it as the standard subtype
        value = Binary.from_uuid(value)
    return json_util.dumps(value, json_options=CANONICAL_JSON_OPTIONS)


def id_of(mongo_id: str) -> Any:
    """The _id value that a mongo_id string stands for: the inverse of mongo_id_of.

    A string that mongo_id_of never writes (such as a string id of an earlier release that is now quoted) reads as
    the value it spells, so that a change published for it names that value's document, never the string's.
    """
    if mongo_id.startswith('"'):
        try:
            quoted = json.loads(mongo_id)
        except ValueError:
            return mongo_id
        return quoted if isinstance(quoted, str) else mongo_id
    if _OBJECT_ID.fullmatch(mongo_id):
        return ObjectId(mongo_id)
    if mongo_id.startswith("{") or mongo_id in _JSON_WORDS:
        try:
            return json_util.loads(mongo_id)
        except Exception:  # noqa: BLE001 - what Extended JSON cannot read (bad $oid, $binary...) is a string
            return mongo_id
    return mongo_id


def id_candidates(mongo_id: str) -> list[Any]:
    """The _id values to look a mongo_id up by in MongoDB: the one it stands for (see id_of)."""
    return [id_of(mongo_id)]


def canonical_id(value: Any) -> Any:
    """``value``, with an ObjectId in neosqlite's storage form (the MongoDB stand-in) as the ObjectId it stands for.

    The stand-in names some documents in change events by ``{"__neosqlite_objectid__": true, "id": "<24 hex>"}``
    (docs/operations.md, "The MongoDB stand-in"); read as a document _id, that would be a third id for the
    ObjectId's document, and a re-read by it would find nothing. No real _id has that form in practice.
    """
    if (
        isinstance(value, dict)
        and len(value) == 2
        and value.get("__neosqlite_objectid__") is True
        and isinstance(value.get("id"), str)
        and ObjectId.is_valid(value["id"])
    ):
        return ObjectId(value["id"])
    return value


def written_otherwise_before(value: Any) -> bool:
    """Whether ``value`` is a string _id that earlier releases wrote as itself and mongo_id_of now quotes."""
    return isinstance(value, str) and not _reads_as_itself(value)


_OBJECT_ID = re.compile(r"[0-9a-f]{24}")
_JSON_WORDS = ("true", "false", "null")


def _reads_as_itself(text: str) -> bool:
    read = id_of(text)
    return isinstance(read, str) and read == text


def ejson_id(value: Any) -> str:
    """An _id as canonical Extended JSON, which keeps its BSON type: a scan's position, stored in Redis."""
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
