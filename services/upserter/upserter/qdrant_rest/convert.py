"""Qdrant's REST request and response JSON, to and from the embedded engine's (qdrant_edge) objects.

Placeholder: the translation is being written; every function raises NotServed until then.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from uuid import UUID

import qdrant_edge as qe

from vecsync.store.embedded import CONFIG_FILE


class BadRequest(Exception):
    """A request Qdrant would refuse with 400: its message says what is wrong."""


class NotServed(Exception):
    """A part of Qdrant's API this server does not serve (answered 501): its message names the part."""


def engine_filter(body: Any) -> qe.Filter | None:
    raise NotServed("filters")


def search_request(body: dict[str, Any]) -> qe.QueryRequest:
    raise NotServed("points/search")


def query_request(body: dict[str, Any], shard: qe.EdgeShard) -> qe.QueryRequest:
    raise NotServed("points/query")


def scroll_request(body: dict[str, Any]) -> qe.ScrollRequest:
    raise NotServed("points/scroll")


def count_request(body: dict[str, Any]) -> qe.CountRequest:
    raise NotServed("points/count")


def point_ids(values: Any) -> list[int | UUID | str]:
    raise NotServed("point ids")


def payload_selector(with_payload: Any) -> bool | list[str] | qe.PayloadSelector:
    raise NotServed("with_payload")


def vector_selector(with_vector: Any) -> bool | list[str]:
    raise NotServed("with_vector")


def query_groups(body: dict[str, Any], shard: qe.EdgeShard) -> dict[str, Any]:
    raise NotServed("points/query/groups")


def collection_info(info: Any, path: Path) -> dict[str, Any]:
    """Qdrant's CollectionInfo of the shard at ``path``: its counts (``info``, the engine's ShardInfo), its
    vectors as created (the shard's config file) and its payload indexes."""
    config = json.loads((path / CONFIG_FILE).read_text())
    vectors = config.get("vectors") or {}
    dense = vectors.get("")
    params: dict[str, Any] = {
        "vectors": {"size": dense["size"], "distance": dense["distance"]} if dense else {},
        "shard_number": 1,
        "replication_factor": 1,
        "write_consistency_factor": 1,
        "on_disk_payload": True,
    }
    if config.get("sparse_vectors"):
        params["sparse_vectors"] = {
            name: {"modifier": sparse.get("modifier", "none")} if sparse.get("modifier") else {}
            for name, sparse in config["sparse_vectors"].items()
        }
    optimizers = config.get("optimizers") or {}
    return {
        "status": "green",
        "optimizer_status": "ok",
        "indexed_vectors_count": info.indexed_vectors_count,
        "points_count": info.points_count,
        "segments_count": info.segments_count,
        "config": {
            "params": params,
            # The engine searches exactly (no HNSW graph: vecsync.store.embedded); these are Qdrant's defaults.
            "hnsw_config": {"m": 16, "ef_construct": 100, "full_scan_threshold": 10000},
            "optimizer_config": {
                "deleted_threshold": optimizers.get("deleted_threshold") or 0.2,
                "vacuum_min_vector_number": optimizers.get("vacuum_min_vector_number") or 1000,
                "default_segment_number": optimizers.get("default_segment_number") or 0,
                "indexing_threshold": optimizers.get("indexing_threshold", 0),
                "flush_interval_sec": 5,
            },
            "quantization_config": None,
        },
        "payload_schema": {name: payload_index(index) for name, index in info.payload_schema.items()},
    }


def payload_index(index: Any) -> dict[str, Any]:
    """Qdrant's PayloadIndexInfo of one of the engine's payload indexes."""
    kind = str(index.data_type).rsplit(".", 1)[-1].lower()
    return {"data_type": kind, "points": int(getattr(index, "points", 0) or 0)}


def scored_point(point: qe.ScoredPoint) -> dict[str, Any]:
    raise NotServed("scored points")


def record(point: qe.Record) -> dict[str, Any]:
    raise NotServed("records")
