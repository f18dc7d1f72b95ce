"""`vecsync verify` compares each point with its document as MongoDB holds it now, not with the point's own hashes."""

from __future__ import annotations

import pytest

from tests.integration.test_cli import cli
from tests.support.pipeline import Pipeline
from vecsync.cli.context import EXIT_DRIFT, EXIT_OK
from vecsync.documents import point_id


def tamper(pipeline: Pipeline, mongo_id: str, **changes: object) -> None:
    """Rewrite some payload fields of a point by hand, keeping its vector and its text_sha256."""
    pid = point_id(pipeline.source, mongo_id)
    [record] = pipeline.store.retrieve([pid])
    pipeline.store.overwrite_payloads({pid: {**(record.payload or {}), **changes}})


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
