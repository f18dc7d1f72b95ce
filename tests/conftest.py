"""Fixtures: real Redis, the MongoDB stand-in and the embedding-api as subprocesses; Qdrant's engine in-process.

The ``store`` fixture is the embedded engine, as the embedded default runs it. test_vectorstore.py and
test_fence.py run on both implementations of the store (tests/support/stores.py).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest
import redis

from tests.support.pipeline import Pipeline
from tests.support.servers import (
    RedisCluster,
    Server,
    start_embedding_api,
    start_mongo,
    start_redis,
    start_redis_cluster,
)
from tests.support.stores import make_store
from vecsync.redis_client import connect
from vecsync.vectorstore import VectorStore

_collection_names = itertools.count()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: Server) -> str:
    return f"redis://127.0.0.1:{redis_server.port}/0"


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = connect(redis_url)
    client.flushall()
    yield client
    client.close()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A real Redis Cluster of three masters and three replicas, shared by the tests that need one."""
    cluster = start_redis_cluster(tmp_path_factory.mktemp("redis-cluster"))
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster_client(redis_cluster: RedisCluster) -> Iterator[redis.Redis]:
    client = connect(redis_cluster.url, cluster=True)
    client.flushall(target_nodes=redis.RedisCluster.PRIMARIES)  # type: ignore[call-arg]
    yield client
    client.close()


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_mongo(tmp_path_factory.mktemp("mongo"))
    yield server
    server.stop()


@pytest.fixture
def mongo_uri(mongo_server: Server) -> str:
    return f"mongodb://127.0.0.1:{mongo_server.port}/?directConnection=true"


@pytest.fixture
def mongo_collection(mongo_uri: str) -> Iterator[pymongo.collection.Collection[dict[str, Any]]]:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_uri)
    # A fresh collection per test: the stand-in keeps change history per collection.
    collection = client["app"][f"documents_{next(_collection_names)}"]
    yield collection
    client.close()


@pytest.fixture(scope="session")
def hash_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_embedding_api(tmp_path_factory.mktemp("hash-api"), "hash")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def model_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_embedding_api(tmp_path_factory.mktemp("model-api"), "torch")
    yield server
    server.stop()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[VectorStore]:
    store = make_store("embedded", tmp_path)
    yield store
    store.close()


@pytest.fixture
def pipeline(
    redis_client: redis.Redis,
    redis_url: str,
    mongo_uri: str,
    mongo_collection: pymongo.collection.Collection[dict[str, Any]],
    hash_api: Server,
    store: VectorStore,
    tmp_path: Path,
) -> Pipeline:
    """The three stages in this process, run to completion one after another by ``drain()``."""
    return Pipeline(
        redis_client=redis_client,
        redis_url=redis_url,
        mongo_uri=mongo_uri,
        collection=mongo_collection,
        embedding_url=f"http://127.0.0.1:{hash_api.port}",
        store=store,
        data_dir=tmp_path,
    )
