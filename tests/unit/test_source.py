import datetime
import json
import uuid
from typing import Any

from bson import Binary, Decimal128, ObjectId
from bson.datetime_ms import DatetimeMS

from vecsync.bson_codec import mongo_id_of, to_plain


def test_mongo_ids() -> None:
    oid = ObjectId("65f0c0ffee0000000000abcd")
    assert mongo_id_of(oid) == "65f0c0ffee0000000000abcd"
    assert mongo_id_of("ticket-1") == "ticket-1"
    assert mongo_id_of(5) == '{"$numberInt": "5"}'
    assert mongo_id_of({"a": 1}) == '{"a": {"$numberInt": "1"}}'
    standard = '{"$binary": {"base64": "AAAAAAAAAAAAAAAAAAAAAQ==", "subType": "04"}}'
    assert mongo_id_of(uuid.UUID(int=1)) == mongo_id_of(Binary.from_uuid(uuid.UUID(int=1))) == standard


def test_bson_values_become_json() -> None:
    document = {
        "_id": ObjectId("65f0c0ffee0000000000abcd"),
        "date": datetime.datetime(1960, 5, 1, 12, 0),
        "far": DatetimeMS(2**62),
        "uuid": uuid.UUID(int=1),
        "bin": Binary(b"\x00\x01"),
        "dec": Decimal128("1.5"),
        "nan": float("nan"),
        "nested": [{"when": datetime.datetime(2101, 1, 1, tzinfo=datetime.UTC)}],
    }
    plain = to_plain(document)
    json.dumps(plain, allow_nan=False)  # valid JSON, no NaN
    assert plain["_id"] == "65f0c0ffee0000000000abcd"
    assert plain["date"] == "1960-05-01T12:00:00Z"
    assert plain["far"] == {"$date": 2**62}
    assert plain["uuid"] == "00000000-0000-0000-0000-000000000001"
    assert plain["bin"] == "AAE="
    assert plain["dec"] == "1.5"
    assert plain["nan"] == "nan"
    assert plain["nested"][0]["when"] == "2101-01-01T00:00:00Z"


def test_durable_reads_are_primary_majority_reads_whatever_the_uri_asks() -> None:
    import pymongo
    from pymongo import ReadPreference
    from pymongo.read_concern import ReadConcern

    from vecsync.mongo_reads import durable_reads

    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        "mongodb://127.0.0.1:1/?readPreference=secondaryPreferred&readConcernLevel=local", connect=False
    )
    try:
        collection = durable_reads(client["app"]["documents"])
        assert collection.read_preference == ReadPreference.PRIMARY
        assert collection.read_concern == ReadConcern("majority")
    finally:
        client.close()


HEX = "65f0c0ffee0000000000abcd"


def test_an_objectid_and_a_string_of_its_digits_are_two_documents() -> None:
    from vecsync.bson_codec import id_candidates
    from vecsync.documents import point_id

    assert mongo_id_of(ObjectId(HEX)) == HEX, "ObjectIds keep the id string, so the point id, they always had"
    assert mongo_id_of(HEX) == f'"{HEX}"'
    assert point_id("app.documents", mongo_id_of(ObjectId(HEX))) != point_id("app.documents", mongo_id_of(HEX))
    assert id_candidates(mongo_id_of(ObjectId(HEX))) == [ObjectId(HEX)]
    assert id_candidates(mongo_id_of(HEX)) == [HEX]
    assert mongo_id_of(HEX.upper()) == HEX.upper(), "no ObjectId is written in capitals: nothing to tell apart"


def test_the_stand_ins_form_of_an_objectid_is_that_objectid() -> None:
    from vecsync.bson_codec import id_candidates

    stored_form = {"__neosqlite_objectid__": True, "id": HEX}
    assert mongo_id_of(stored_form) == mongo_id_of(ObjectId(HEX)) == HEX
    assert id_candidates(mongo_id_of(stored_form)) == [ObjectId(HEX)]


def test_every_id_reads_back_as_the_value_and_type_it_was() -> None:
    from vecsync.bson_codec import id_of

    values: list[Any] = [
        ObjectId(HEX),
        HEX,
        HEX.upper(),
        "ticket-1",
        "",
        "true",
        True,
        False,
        "null",
        None,
        7,
        "7",
        '{"$numberInt": "7"}',
        '"quoted"',
        '"',
        "{not json",
        1.5,
        {"a": 1},
        Binary.from_uuid(uuid.UUID(int=1)),
        Decimal128("1.5"),
    ]
    ids = [mongo_id_of(value) for value in values]
    assert len(set(ids)) == len(ids), f"two values share an id string: {ids}"
    for value, mongo_id in zip(values, ids, strict=True):
        read = id_of(mongo_id)
        assert (type(read), read) == (type(value), value), mongo_id
    # Strings that only look like another value's id are the only ones written otherwise than as themselves.
    assert [mongo_id_of(text) for text in ("ticket-1", "7", "{not json", '"')] == ["ticket-1", "7", "{not json", '"']


def test_strings_that_extended_json_cannot_read_are_ids_as_they_are() -> None:
    from vecsync.bson_codec import id_of

    for text in ['{"$oid": "zz"}', '{"$binary": 5}', '{"$numberLong": []}', '{"$timestamp": 1}', '{"a": ' + "[" * 5000]:
        assert mongo_id_of(text) == text
        assert id_of(text) == text
