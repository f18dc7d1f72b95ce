"""A vecsync-upserter process serving Qdrant's REST API over its embedded store, for the tests of that API."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

from tests.support.pipeline import Pipeline
from tests.support.servers import BIN, free_port, wait_for


class Upserter:
    """A vecsync-upserter process holding the embedded store under ``data_dir``, its REST API on a free port."""

    def __init__(self, data_dir: Path, redis_url: str, **env: str) -> None:
        self.rest_port, self.metrics_port = free_port(), free_port()
        self.base = f"http://127.0.0.1:{self.rest_port}"
        self.log = data_dir.parent / f"{data_dir.name}-upserter.log"
        environment = {
            **os.environ,
            "REDIS_URL": redis_url,
            "DATA_DIR": str(data_dir),
            "METRICS_HOST": "127.0.0.1",
            "METRICS_PORT": str(self.metrics_port),
            "QDRANT_REST_PORT": str(self.rest_port),
            "EMBEDDING_DIM": "384",
            "BACKOFF_INITIAL_S": "0.01",
            "BACKOFF_MAX_S": "0.05",
            "BLOCK_MS": "50",
            **env,
        }
        with open(self.log, "wb") as output:
            self.process = subprocess.Popen(
                [str(BIN / "vecsync-upserter")], env=environment, stdout=output, stderr=subprocess.STDOUT
            )

    def output(self) -> str:
        return self.log.read_text()

    def wait_for_collection(self, headers: dict[str, str] | None = None) -> None:
        def exists() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"the upserter exited with {self.process.returncode}:\n{self.output()}")
            reply = requests.get(self.base + "/collections/documents/exists", headers=headers, timeout=2)
            return bool(reply.ok and reply.json()["result"]["exists"])

        wait_for(exists, timeout=60, what=f"the upserter's collection through its REST API:\n{self.output()}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(10)


@contextmanager
def running_upserter(data_dir: Path, redis_url: str, **env: str) -> Iterator[Upserter]:
    upserter = Upserter(data_dir, redis_url, **env)
    try:
        yield upserter
    finally:
        upserter.stop()


def pipeline_environment(pipeline: Pipeline) -> dict[str, str]:
    """What an upserter process needs to apply the stage 2 of ``pipeline`` (whose other stages run in the test)."""
    settings = pipeline.upserter_settings()
    return {
        "MONGO_URI": pipeline.mongo_uri,
        "MONGO_DATABASE": pipeline.collection.database.name,
        "MONGO_COLLECTION": pipeline.collection.name,
        "STAGE2_STREAM": settings.stage2_stream,
        "STAGE2_GROUP": settings.stage2_group,
    }


def embed_stage_1(pipeline: Pipeline) -> None:
    """Run the producer and the embedder-worker of ``pipeline`` until stage 2 holds every change."""
    pipeline.run_producer()
    for partition in pipeline.upserter_settings().partitions.indexes():
        pipeline.embedder_consumer(partition).run(drain=True)


def points_count(base: str, headers: dict[str, Any] | None = None) -> int:
    reply = requests.get(base + "/collections/documents", headers=headers, timeout=5)
    return int(reply.json()["result"]["points_count"])


def scrolled_points(base: str) -> dict[str, dict[str, Any]]:
    """Every point of ``documents`` through the REST API's scroll, its payload (vectors left out) by point id."""
    points: dict[str, dict[str, Any]] = {}
    offset = None
    while True:
        body = {"limit": 64, "with_payload": True, **({"offset": offset} if offset is not None else {})}
        reply = requests.post(base + "/collections/documents/points/scroll", json=body, timeout=10)
        assert reply.status_code == 200, reply.text
        result = reply.json()["result"]
        points.update({str(point["id"]): point["payload"] for point in result["points"]})
        offset = result["next_page_offset"]
        if offset is None:
            return points
