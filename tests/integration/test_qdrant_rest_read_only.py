"""A search client with a read-only key: `vecsync search` against a Qdrant server (here the upserter's REST API over
Qdrant's engine, with Qdrant's two keys) reads with QDRANT_READ_ONLY_API_KEY's key and writes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from qdrant_client import QdrantClient

from embedding_api.backends import HashEncoder
from tests.support.rest_api import RestApi
from tests.support.servers import Server
from upserter.qdrant_rest.app import RestKeys
from vecsync.store.server import ServerStore
from vecsync.vectorstore import Point

VECSYNC = str(Path(sys.executable).parent / "vecsync")
READ_WRITE, READ_ONLY = "read-write-key-0123456789", "read-only-key-0123456789"
TEXTS = {"a": "refund for a double charge", "b": "the app crashes at start", "c": "reset my password"}


@pytest.fixture
def api(tmp_path: Path) -> Iterator[RestApi]:
    served = RestApi(tmp_path / "qdrant", keys=RestKeys(read_write=READ_WRITE, read_only=READ_ONLY)).start()
    yield served
    served.stop()


# Over http on 127.0.0.1, qdrant-client's warning about a key sent unencrypted is expected.
@pytest.mark.filterwarnings("ignore:Api key is used with an insecure connection")
def test_vecsync_search_reads_with_the_read_only_key(api: RestApi, hash_api: Server, redis_url: str) -> None:
    writer = ServerStore(QdrantClient(url=api.url, api_key=READ_WRITE, check_compatibility=False), "documents", 384)
    writer.ensure_collection()
    vectors = HashEncoder(384).encode(list(TEXTS.values()))
    writer.upsert(
        [
            Point(
                f"00000000-0000-0000-0000-00000000000{n}", [float(x) for x in vector], {"mongo_id": key, "text": text}
            )
            for n, ((key, text), vector) in enumerate(zip(TEXTS.items(), vectors, strict=True))
        ]
    )
    writer.close()
    before = requests.get(f"{api.url}/collections/documents", headers={"api-key": READ_ONLY}, timeout=5).json()
    env = {
        **os.environ,
        "QDRANT_URL": api.url,
        "QDRANT_API_KEY": READ_ONLY,
        "EMBEDDING_URL": f"http://127.0.0.1:{hash_api.port}",
        "REDIS_URL": redis_url,
        "PAYLOAD_FIELDS": "owner",  # an index the collection lacks: a search client must not try to create it
    }
    run = subprocess.run(
        [VECSYNC, "search", TEXTS["b"], "--json", "--limit", "2"], env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    hits = json.loads(run.stdout)
    assert hits[0]["payload"]["mongo_id"] == "b"
    after = requests.get(f"{api.url}/collections/documents", headers={"api-key": READ_ONLY}, timeout=5).json()
    assert after["result"]["payload_schema"] == before["result"]["payload_schema"]
    assert after["result"]["points_count"] == 3
