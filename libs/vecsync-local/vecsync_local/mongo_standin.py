"""``python -m vecsync_local.mongo_standin``: the nx-27017 MongoDB stand-in, corrected where it breaks change
capture.

The embedded default (``make run``) and the tests use nx-27017, a MongoDB
wire-protocol server backed by SQLite through neosqlite, in place of mongod.
It takes nx-27017's own command-line arguments. Before serving, it corrects
two ways in which the stand-in answers differently from MongoDB, so that the
producer can stay written for real MongoDB only (docs/operations.md, "The
MongoDB stand-in"):

* Change events. nx-27017 builds ``documentKey._id`` from the text form of the
  id that SQLite indexes (an int ``_id`` comes back as a string), and passes the
  stored document to ``fullDocument`` in neosqlite's storage JSON (an ObjectId
  as ``{"__neosqlite_objectid__": true, "id": ...}``, a date as ``{"$date": ...}``).
  Both are decoded here from the stored document, as neosqlite's own reads
  decode it, so each event names its document by the ``_id`` value and type
  that a find returns.
* Binary values, UUIDs among them. nx-27017 drops the BSON subtype of every
  binary value it receives (a UUID is stored as plain bytes) and binds binary
  ``_id`` lookups as SQL blobs, which never equal the text form in which the
  ``_id`` is indexed; so a document with a UUID ``_id`` could be inserted but
  never found, updated or deleted by it. Binary values keep their subtype
  here, and a binary ``_id`` is looked up in its indexed text form.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Callable
from importlib import metadata
from typing import Any

# The version whose internals these corrections were written against and tested with.
TESTED_VERSION = "0.8.1"


def apply_corrections() -> None:
    """Patch the imported nx-27017 and neosqlite modules; call it once, before the server starts."""
    import bson
    import nx_27017.changestream as changestream
    import nx_27017.utils as utils
    import nx_27017.wire_protocol as wire_protocol
    from neosqlite.binary import Binary as NeoBinary
    from neosqlite.collection.json_helpers import neosqlite_json_loads

    _require(changestream.ChangeStreamManager, "_translate_row")
    _require(utils, "convert_bson_to_neo_objectids")
    _require(wire_protocol, "_convert_objectids")

    translate_row = changestream.ChangeStreamManager._translate_row

    def translate_row_decoded(self: Any, stream: Any, rowid: int, row: Any) -> dict[str, Any] | None:
        event: dict[str, Any] | None = translate_row(self, stream, rowid, row)
        # The stored document holds the _id in its own type; the row's indexed _id is only its text form.
        stored = row[3]
        if event is None or not stored:
            return event
        document = neosqlite_json_loads(stored.decode("utf-8") if isinstance(stored, bytes) else stored)
        if not isinstance(document, dict):
            return event
        if "_id" in document:
            event["documentKey"] = {"_id": document["_id"]}
        else:
            document["_id"] = event["documentKey"]["_id"]
        if event.get("fullDocument") is not None:
            event["fullDocument"] = document
        return event

    # nx-27017 hands neosqlite pymongo's Binary, a bytes, which neosqlite stores as its own Binary of subtype 0.
    def binaries_to_neo(value: Any) -> Any:
        if isinstance(value, bson.Binary):
            return NeoBinary(bytes(value), value.subtype)
        if isinstance(value, dict):
            return {key: binaries_to_neo(item) for key, item in value.items()}
        if isinstance(value, list):
            return [binaries_to_neo(item) for item in value]
        return value

    # neosqlite's Binary is a bytes too, which BSON encodes with subtype 0.
    def binaries_to_bson(value: Any) -> Any:
        if isinstance(value, NeoBinary):
            return bson.Binary(bytes(value), value.subtype)
        if isinstance(value, dict):
            return {key: binaries_to_bson(item) for key, item in value.items()}
        if isinstance(value, list):
            return [binaries_to_bson(item) for item in value]
        return value

    changestream.ChangeStreamManager._translate_row = translate_row_decoded
    utils.convert_bson_to_neo_objectids = _then(binaries_to_neo, utils.convert_bson_to_neo_objectids)
    wire_protocol._convert_objectids = _then(wire_protocol._convert_objectids, binaries_to_bson)
    # neosqlite indexes every _id as text, a binary one as str(bytes); an _id lookup binds the query's value as
    # is. Binding a binary value as that same text is what makes the lookup find it.
    sqlite3.register_adapter(NeoBinary, lambda value: str(bytes(value)))


def _then(first: Callable[[Any], Any], second: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: second(first(value))


def _require(owner: object, name: str) -> None:
    if not hasattr(owner, name):
        raise SystemExit(
            f"nx-27017 {_installed_version()} has no {name}, which vecsync_local.mongo_standin corrects; it was "
            f"written for nx-27017 {TESTED_VERSION}. Install nx-27017=={TESTED_VERSION}."
        )


def _installed_version() -> str:
    try:
        return metadata.version("nx-27017")
    except metadata.PackageNotFoundError:
        return "(not installed)"


def main() -> None:
    try:
        from nx_27017.nx_27017 import main as serve
    except ImportError:
        raise SystemExit(
            "The MongoDB stand-in needs the nx-27017 package, a dependency of vecsync-local; install it "
            "(`make venv` does), or point MONGO_URI at a MongoDB replica set."
        ) from None
    apply_corrections()
    sys.argv[0] = "nx-27017"
    serve()


if __name__ == "__main__":
    main()
