"""`vecsync verify` compares each point with its document as MongoDB holds it now, not with the point's own hashes."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from tests.integration.test_cli import cli, seed
from tests.support.pipeline import Pipeline
from tests.support.servers import Server, free_port, start_embedding_api
from vecsync.cli.context import EXIT_DRIFT, EXIT_FAILED, EXIT_OK
from vecsync.constants import VERIFY_PROGRESS_PREFIX
from vecsync.documents import point_id
from vecsync.vectorstore import Point


def tamper(pipeline: Pipeline, mongo_id: str, **changes: object) -> None:
    """Rewrite some payload fields of a point by hand, keeping its vector and its text_sha256."""
    pid = point_id(pipeline.source, mongo_id)
    [record] = pipeline.store.retrieve([pid], with_vectors=True)
    assert record.vector is not None
    pipeline.store.upsert([Point(pid, record.vector, {**record.payload, **changes})])


def without_versions(points: dict[str, dict[str, object]]) -> dict[str, dict[str, object]]:
    """The payloads, but for the version fields, which a repair (a new change) moves on."""
    return {key: {k: v for k, v in payload.items() if not k.startswith("version")} for key, payload in points.items()}


def test_verify_compares_the_payload_with_the_document_and_repair_restores_it(
    pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline.collection.insert_many(
        [{"_id": f"d{i}", "subject": f"ticket {i}", "content": "text", "owner": "Ann"} for i in range(5)]
    )
    pipeline.drain()
    before = pipeline.points()
    tamper(pipeline, "d1", text="a text the document never had")  # its text_sha256 still matches the document
    tamper(pipeline, "d2", owner="Bo")  # a PAYLOAD_FIELD
    tamper(pipeline, "d3", customer="Acme")  # a PAYLOAD_FIELD the document does not have

    assert cli(pipeline, "verify") == EXIT_DRIFT
    report = capsys.readouterr().out
    assert "0 missing, 0 extra, 3 stale" in report, report
    assert "stale: d1, d2, d3" in report

    assert cli(pipeline, "--yes", "verify", "--repair") == EXIT_OK
    pipeline.drain()
    assert without_versions(pipeline.points()) == without_versions(before)
    assert cli(pipeline, "verify") == EXIT_OK
    assert "0 missing, 0 extra, 0 stale" in capsys.readouterr().out


def test_switching_from_the_hash_backend_to_the_model_is_found_and_repaired(
    pipeline: Pipeline, model_api: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline.collection.insert_many(
        [{"_id": f"d{i}", "subject": f"ticket {i}", "content": f"my printer {i} jams"} for i in range(4)]
    )
    pipeline.drain()  # with EMBEDDING_BACKEND=hash
    assert {payload["model"] for payload in pipeline.points().values()} == {"hash-384"}

    pipeline.embedding_url = f"http://127.0.0.1:{model_api.port}"  # restarted with the real model
    assert cli(pipeline, "verify") == EXIT_DRIFT
    report = capsys.readouterr().out
    assert "4 stale" in report, report
    assert "made by another model than all-MiniLM-L6-v2 (hash-384): d0, d1, d2, d3" in report, report

    assert cli(pipeline, "--yes", "verify", "--repair") == EXIT_OK
    pipeline.drain()
    points = pipeline.points()
    texts = [points[f"d{i}"]["text"] for i in range(4)]
    reply = requests.post(f"{pipeline.embedding_url}/encode_batch", json={"texts": texts}, timeout=60).json()
    for i, expected in enumerate(reply["embeddings"]):
        [record] = pipeline.store.retrieve([point_id(pipeline.source, f"d{i}")], with_vectors=True)
        assert record.payload is not None and record.payload["model"] == "all-MiniLM-L6-v2"
        assert record.vector == pytest.approx(expected, abs=1e-5)
    capsys.readouterr()
    assert cli(pipeline, "verify") == EXIT_OK
    assert "0 missing, 0 extra, 0 stale" in capsys.readouterr().out


class TestVerifyWaitsForTheModel:
    """verify checks each point's model against the one the embedding-api runs, so it must learn that model first."""

    def test_verify_waits_for_an_embedding_api_that_is_loading_its_model(
        self, pipeline: Pipeline, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        seed(pipeline, 3)  # embedded by the hash backend: every point is of another model than the real one
        api = start_embedding_api(tmp_path / "api", "torch", wait_ready=False)
        try:
            url = f"http://127.0.0.1:{api.port}"
            # Right after its port opens it is still importing torch and loading the model, for seconds.
            assert cli(pipeline, "verify", "--ready-timeout", "0.5", embedding_url=url) == EXIT_FAILED
            err = capsys.readouterr().err
            assert "still loading its model" in err and "--ready-timeout" in err and "--skip-model-check" in err
            assert not pipeline.redis_client.get(VERIFY_PROGRESS_PREFIX + pipeline.source), "nothing to resume"
            assert cli(pipeline, "verify", embedding_url=url) == EXIT_DRIFT
            out = capsys.readouterr().out
            assert "0 missing, 0 extra, 3 stale" in out
            assert "made by another model than all-MiniLM-L6-v2 (hash-384)" in out
        finally:
            api.stop()

    def test_verify_fails_when_it_cannot_reach_the_embedding_api(
        self, pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
    ) -> None:
        seed(pipeline, 2)
        nowhere = f"http://127.0.0.1:{free_port()}"
        assert cli(pipeline, "verify", "--ready-timeout", "0.2", embedding_url=nowhere) == EXIT_FAILED
        err = capsys.readouterr().err
        assert f"The embedding-api at {nowhere} could not be reached" in err and "EMBEDDING_URL" in err
        assert cli(pipeline, "verify", "--skip-model-check", embedding_url=nowhere) == EXIT_OK
        out = capsys.readouterr().out
        assert "not checked for vectors of another model" in out and "0 missing, 0 extra, 0 stale" in out


def test_a_point_a_string_shared_before_the_upgrade_is_extra_and_repair_deletes_it(
    pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    # An earlier release wrote the string's point under the string itself; the document was deleted before the
    # upgrade, so no scan finds it. Its id string now names the ObjectId of those digits, which does not exist.
    hex_string = "65f0c0ffee0000000000abcd"
    pipeline.collection.insert_one({"_id": "kept", "subject": "a document"})
    pipeline.drain()
    [record] = pipeline.store.retrieve([point_id(pipeline.source, "kept")], with_vectors=True)
    assert record.vector is not None
    stale = point_id(pipeline.source, hex_string)
    pipeline.store.upsert([Point(stale, record.vector, {**record.payload, "mongo_id": hex_string})])

    assert cli(pipeline, "verify") == EXIT_DRIFT
    assert f"extra: {hex_string}" in capsys.readouterr().out
    assert cli(pipeline, "--yes", "verify", "--repair") == EXIT_OK
    pipeline.drain()
    assert not pipeline.store.retrieve([stale])
    assert list(pipeline.points()) == ["kept"]
