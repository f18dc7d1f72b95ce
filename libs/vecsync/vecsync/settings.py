"""Settings, read from the environment and validated at start-up.

Each service has one settings class built from the mixins below. Field names
are the environment variable names (case-insensitive), so ``redis_url`` is
``REDIS_URL``. ``load()`` turns a validation failure into one clear message
that names every offending variable.

One job, the settings of every process: ``load()`` stays beside the classes, as it is how each of them is built,
and it hands their secrets to vecsync.redaction as it builds them.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar
from urllib.parse import urlsplit

from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from vecsync import constants
from vecsync.errors import ConfigurationError
from vecsync.partitions import Partitions, base_name
from vecsync.redaction import redact, redact_url, remember_secret, remember_url_secrets
from vecsync.sync import Sync, overlap_too_large

CommaList = Annotated[list[str], NoDecode]

# Secrets can also come from files: with VECSYNC_SECRETS_DIR set (e.g. /run/secrets, where Compose and
# Kubernetes mount them), a file named after a setting, such as `redis_url` or `qdrant_api_key`, provides
# its value. The environment wins over a file.
SETTINGS_CONFIG = SettingsConfigDict(
    case_sensitive=False, extra="ignore", secrets_dir=os.environ.get("VECSYNC_SECRETS_DIR") or None
)


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _empty_is_unset(value: object) -> object:
    """An empty value as unset: Compose passes a variable that .env leaves unset as an empty string (${NAME:-})."""
    return None if isinstance(value, str) and not value.strip() else value


def require_scheme(*schemes: str) -> Callable[[str], str]:
    """A validator for a URL setting that must use one of ``schemes``, e.g. ``require_scheme("http", "https")``.

    Without one, a URL such as ``127.0.0.1:6379`` parses as a path: clients then fail on it far from the setting.
    """

    def check(value: str) -> str:
        scheme = urlsplit(value).scheme if "://" in value else ""
        if scheme.lower() not in schemes:
            example = _URL_EXAMPLES.get(schemes[0], f"{schemes[0]}://HOST:PORT")
            found = f"scheme {scheme}://" if scheme else "no scheme"
            raise ValueError(
                f"must be a URL starting with {' or '.join(s + '://' for s in schemes)}, "
                f"such as {example}; this one has {found}"
            )
        return value

    return check


_URL_EXAMPLES = {
    "redis": "redis://127.0.0.1:6379/0",
    "mongodb": "mongodb://127.0.0.1:27017/?directConnection=true",
    "http": "http://127.0.0.1:8080",
}


def default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class CommonSettings(BaseSettings):
    """Fields every vecsync process shares."""

    model_config = SETTINGS_CONFIG

    redis_url: str = "redis://127.0.0.1:6379/0"
    log_level: str = "INFO"
    # Where the embedded default keeps its state (Qdrant local mode, Redis and MongoDB stand-in files).
    data_dir: Path = Path("data")

    stage1_stream: str = constants.STAGE1_STREAM
    stage1_group: str = constants.STAGE1_GROUP
    stage2_stream: str = constants.STAGE2_STREAM
    stage2_group: str = constants.STAGE2_GROUP
    # With Redis's maxmemory set: above this share of it, whatever writes stage 1 waits, and consumers trim every
    # acknowledged entry, retention or not (see vecsync.flow). Redis refuses writes at 100% (noeviction).
    redis_memory_high_water: float = Field(default=0.6, gt=0, le=1)
    # A Redis Cluster, reached through the node REDIS_URL names (docs/scaling.md).
    redis_cluster: bool = False
    # Each stage's stream split into this many streams by document (vecsync.partitions). 1 keeps the seed's names.
    # Every process of one pipeline must use the same number; it changes only while the pipeline is drained.
    stream_partitions: int = Field(default=1, ge=1, le=1024)
    # The sync definition file (vecsync.syncs): several collections, each with its mapping, filter and target.
    # Unset, the environment describes the one sync (MONGO_COLLECTION, TEXT_FIELDS, QDRANT_COLLECTION, ...).
    vecsync_config: Path | None = None
    # Set by vecsync.syncs.settings_for on the settings of one sync; read back with vecsync.syncs.sync_of.
    _sync: Sync | None = PrivateAttr(default=None)

    _redis_url = field_validator("redis_url")(require_scheme("redis", "rediss", "unix"))

    @property
    def partitions(self) -> Partitions:
        return Partitions(self.stream_partitions, redis_cluster=self.redis_cluster)

    def pipeline_streams(self) -> list[str]:
        """The base names of both stages' streams, whose STREAM_PARTITIONS every process checks at start-up."""
        return [self.stage1_stream, self.stage2_stream]

    def stage1_groups(self) -> list[tuple[str, str]]:
        """(stream, group) of every partition of stage 1."""
        return [(stream, self.stage1_group) for stream in self.partitions.names(self.stage1_stream)]

    def stage2_groups(self) -> list[tuple[str, str]]:
        """(stream, group) of every partition of stage 2."""
        return [(stream, self.stage2_group) for stream in self.partitions.names(self.stage2_stream)]

    # Compose passes VECSYNC_CONFIG empty when .env sets no VECSYNC_CONFIG_FILE (${VECSYNC_CONFIG_FILE:+...}).
    _empty_config_is_unset = field_validator("vecsync_config", mode="before")(_empty_is_unset)

    @field_validator("log_level")
    @classmethod
    def _known_log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level


class RetentionSettings(BaseSettings):
    """What trimming keeps of a stream even once every group has acknowledged it, for rebuilds and replays."""

    model_config = SETTINGS_CONFIG

    # A count for every stream ("100000"), or per stream ("raw_document_changes=20000,embedded_documents=100000"),
    # or both ("20000,embedded_documents=100000": the plain number for the streams not named). A stage 2 entry
    # carries a vector and weighs two to three times a stage 1 entry (docs/operations.md, "Redis memory").
    stream_retention_count: Annotated[str, NoDecode] = "100000"
    stream_retention_age_s: float = Field(default=0.0, ge=0)

    @field_validator("stream_retention_count", mode="before")
    @classmethod
    def _check_retention_counts(cls, value: object) -> str:
        text = str(value)
        _parse_retention_counts(text)
        return text

    def retention_count(self, stream: str) -> int:
        """The newest entries of ``stream`` (of each of its partitions) that trimming always keeps."""
        default, per_stream = _parse_retention_counts(self.stream_retention_count)
        name = base_name(stream)
        # A sync's stream ("raw_document_changes.tickets") keeps what its stage's stream is given, unless named.
        return per_stream.get(name, per_stream.get(name.rpartition(".")[0], default))


DEFAULT_RETENTION_COUNT = 100_000


def _parse_retention_counts(text: str) -> tuple[int, dict[str, int]]:
    default, per_stream = DEFAULT_RETENTION_COUNT, {}
    for part in [part.strip() for part in text.split(",") if part.strip()]:
        name, sep, count = part.rpartition("=")
        if not count.strip().isdigit():
            raise ValueError(
                f"expected a whole number of entries, or stream=number pairs separated by commas; got {part!r}"
            )
        if sep:
            per_stream[name.strip()] = int(count)
        else:
            default = int(count)
    return default, per_stream


class FlowControlSettings(BaseSettings):
    """How much the pipeline may hold unprocessed before whatever writes stage 1 (the producer, a resync) waits."""

    model_config = SETTINGS_CONFIG

    # Writers of stage 1 stop reading MongoDB while the pipeline holds more than this many entries not yet
    # processed (unread plus pending, both stages together: stage 1 drained into stage 2 still takes memory), and
    # read again once they are no more than PRODUCER_RESUME_BACKLOG (80% of the maximum when unset). Meanwhile the
    # producer's changes wait in MongoDB's oplog.
    producer_max_backlog: int = Field(default=50_000, ge=1)
    producer_resume_backlog: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _resume_below_the_maximum(self) -> FlowControlSettings:
        if self.producer_resume_backlog is None:
            self.producer_resume_backlog = self.producer_max_backlog * 4 // 5
        elif self.producer_resume_backlog > self.producer_max_backlog:
            raise ValueError(
                f"PRODUCER_RESUME_BACKLOG ({self.producer_resume_backlog}) must not exceed PRODUCER_MAX_BACKLOG "
                f"({self.producer_max_backlog})"
            )
        return self


class ServiceSettings(CommonSettings):
    """A long-running service with a /metrics and /healthz server."""

    metrics_host: str = "0.0.0.0"
    metrics_port: int = Field(default=9100, ge=0, le=65535)
    # /healthz answers 503 once the main loop has not come round for this long, beyond the waits it chose (backing
    # off while a dependency is down is alive). It must exceed the slowest single call a stage makes (an embedding
    # call, a Qdrant write). A consumer whose loop stalls also stops keeping its entries: see vecsync.leases.
    stall_timeout_s: float = Field(default=300.0, gt=0)


class ConsumerSettings(ServiceSettings, RetentionSettings):
    """A stage that reads a stream through a consumer group."""

    consumer_name: str = Field(default_factory=default_consumer_name, min_length=1)
    batch_size: int = Field(default=64, ge=1, le=10_000)
    block_ms: int = Field(default=1000, ge=1)
    # When a read returns a partial batch, wait this long for more entries before handling it: bigger batches
    # for more latency. 0 (measured best here, see docs/performance.md) handles what is there at once.
    linger_ms: int = Field(default=0, ge=0)
    # Entries pending longer than this (their consumer died or hung) are reclaimed by another consumer.
    claim_idle_ms: int = Field(default=60_000, ge=1)
    max_deliveries: int = Field(default=5, ge=1)
    backoff_initial_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=30.0, gt=0)
    # How often a consumer trims its input stream (see vecsync.retention); 0 turns it off.
    trim_interval_s: float = Field(default=60.0, ge=0)


class MongoSettings(BaseSettings):
    model_config = SETTINGS_CONFIG

    mongo_uri: str = "mongodb://127.0.0.1:27017/?directConnection=true"
    mongo_database: str = Field(default="app", min_length=1)
    mongo_collection: str = Field(default="documents", min_length=1)

    _mongo_uri = field_validator("mongo_uri")(require_scheme("mongodb", "mongodb+srv"))

    @property
    def source(self) -> str:
        return f"{self.mongo_database}.{self.mongo_collection}"


# Each distribution setting, and the argument of Qdrant's create_collection it sets.
QDRANT_DISTRIBUTION_ARGUMENTS = {
    "qdrant_shards": "shard_number",
    "qdrant_replication_factor": "replication_factor",
    "qdrant_write_consistency": "write_consistency_factor",
}


class QdrantSettings(BaseSettings):
    model_config = SETTINGS_CONFIG

    qdrant_url: str | None = None
    qdrant_path: Path | None = None
    qdrant_api_key: str | None = Field(default=None, repr=False)
    qdrant_collection: str = Field(default="documents", min_length=1)
    qdrant_timeout_s: float = Field(default=30.0, gt=0)
    embedding_dim: int = Field(default=384, ge=1)
    # How a Qdrant server distributes the collection when the upserter (or `vecsync rebuild`) creates it. Unset, the
    # server's defaults apply. An existing collection keeps its own values: see ServerStore.ensure_collection.
    qdrant_shards: int | None = Field(default=None, ge=1)
    qdrant_replication_factor: int | None = Field(default=None, ge=1)
    qdrant_write_consistency: int | None = Field(default=None, ge=1)
    # Talk to the Qdrant server over gRPC (on QDRANT_URL's host, at this port) instead of REST.
    qdrant_prefer_grpc: bool = False
    qdrant_grpc_port: int = Field(default=6334, ge=1, le=65535)

    # ${QDRANT_SHARDS:-} and its like in compose.yaml: empty means Qdrant's own default.
    _empty_distribution_is_unset = field_validator(*QDRANT_DISTRIBUTION_ARGUMENTS, mode="before")(_empty_is_unset)

    @model_validator(mode="after")
    def _url_or_path(self) -> QdrantSettings:
        if self.qdrant_url and self.qdrant_path:
            raise ValueError("set QDRANT_URL (a Qdrant server) or QDRANT_PATH (embedded local mode), not both")
        return self

    @model_validator(mode="after")
    def _distribution_needs_a_server(self) -> QdrantSettings:
        given = [name.upper() for name in QDRANT_DISTRIBUTION_ARGUMENTS if getattr(self, name) is not None]
        if given and not self.qdrant_url:
            raise ValueError(
                f"{', '.join(given)} distribute a collection over the nodes of a Qdrant server, so they need "
                "QDRANT_URL; the embedded store (QDRANT_PATH, or no QDRANT_URL) is one process. Set QDRANT_URL, "
                "or unset them"
            )
        factor, consistency = self.qdrant_replication_factor, self.qdrant_write_consistency
        if factor is not None and consistency is not None and consistency > factor:
            raise ValueError(
                f"QDRANT_WRITE_CONSISTENCY ({consistency}) must not exceed QDRANT_REPLICATION_FACTOR ({factor}): "
                "a write cannot be acknowledged by more replicas than each shard has"
            )
        return self

    def collection_distribution(self) -> dict[str, int]:
        """The distribution arguments of Qdrant's create_collection that are set, e.g. {"shard_number": 6}."""
        values = {argument: getattr(self, name) for name, argument in QDRANT_DISTRIBUTION_ARGUMENTS.items()}
        return {argument: value for argument, value in values.items() if value is not None}

    def embedded_path(self, data_dir: Path) -> Path | None:
        """The local-mode folder to open, or None when a server URL is configured."""
        if self.qdrant_url:
            return None
        return self.qdrant_path or data_dir / "qdrant"


class TextSettings(BaseSettings):
    """How a document becomes the text to embed and the payload to store."""

    model_config = SETTINGS_CONFIG

    text_fields: CommaList = Field(default_factory=lambda: ["subject", "content"], min_length=1)
    payload_fields: CommaList = Field(default_factory=lambda: ["product", "customer", "owner", "date", "subject"])
    # Without chunking (CHUNK_TOKENS=0), longer texts are cut here before embedding: the model only reads its first
    # 256 tokens, so this bounds memory and payload size without changing the vector.
    max_text_chars: int = Field(default=8192, ge=1)
    # Long documents are split into chunks of this many tokens of the model, each its own point (docs/design.md,
    # "Long documents"). Unset: the model's window, as the embedding-api names it. 0: no chunking, each document one
    # point of its first MAX_TEXT_CHARS characters, which the model reads only the start of.
    chunk_tokens: int | None = Field(default=None, ge=0)
    chunk_overlap_tokens: int = Field(default=constants.DEFAULT_OVERLAP_TOKENS, ge=0)
    # With chunking on, a document's whole text is chunked up to this many characters; past it, text is left out.
    max_document_chars: int = Field(default=constants.DEFAULT_MAX_DOCUMENT_CHARS, ge=1)

    # A sparse vector beside the dense one in each point, for keyword and hybrid search (constants.SPARSE_MODELS).
    # Unset: dense vectors only. It shapes a collection when one is created; an existing collection keeps its own.
    sparse_model: str | None = None
    # The model the collection is built with (docs/operations.md, "Switch the embedding model"). Unset: the
    # embedding-api's default model. Set to another model than the collection's, the pipeline builds a collection
    # of that model beside it and switches the collection's name (an alias) to it once built (vecsync.reindex).
    embedding_model: str | None = None

    _split_text_fields = field_validator("text_fields", "payload_fields", mode="before")(_split_commas)

    # ${CHUNK_TOKENS:-} and ${SPARSE_MODEL:-} in compose.yaml: empty means unset.
    _empty_values_are_unset = field_validator("chunk_tokens", "sparse_model", "embedding_model", mode="before")(
        _empty_is_unset
    )

    @field_validator("sparse_model")
    @classmethod
    def _known_sparse_model(cls, value: str | None) -> str | None:
        if value is not None and value not in constants.SPARSE_MODELS:
            raise ValueError(
                f"SPARSE_MODEL is {value!r}; it must be one of {', '.join(constants.SPARSE_MODELS)}, or empty for "
                "dense vectors only"
            )
        return value

    @model_validator(mode="after")
    def _overlap_within_chunk(self) -> TextSettings:
        if overlap_too_large(self.chunk_tokens, self.chunk_overlap_tokens):
            raise ValueError(
                f"CHUNK_OVERLAP_TOKENS={self.chunk_overlap_tokens} must be below CHUNK_TOKENS={self.chunk_tokens}: "
                "consecutive chunks share the overlap, so each must hold more than it"
            )
        return self


SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def load(cls: type[SettingsT]) -> SettingsT:
    """Build ``cls`` from the environment, or raise ConfigurationError naming each bad variable."""
    try:
        loaded = cls()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = "_".join(str(part) for part in error["loc"]).upper() or "configuration"
            given = error.get("input")
            if isinstance(given, str) and name.endswith(_URL_SUFFIXES):
                remember_url_secrets(given)
                given = redact_url(given)
            shown = "" if isinstance(given, dict) or name.endswith("KEY") else f" (got {given!r})"
            problems.append(f"{name}: {error['msg']}{shown}")
        raise ConfigurationError(redact("Invalid configuration: " + "; ".join(problems))) from None
    _remember_secrets(loaded)
    return loaded


# Settings that hold a URL, whose password is masked wherever it is shown, and settings that are secrets whole.
_URL_SUFFIXES = ("_URL", "_URI")
_SECRET_SUFFIXES = ("_KEY", "_PASSWORD", "_TOKEN", "_SECRET")


def _remember_secrets(loaded: BaseSettings) -> None:
    """Have vecsync.redaction mask the secrets of ``loaded`` in every later message and log."""
    for name, value in loaded.model_dump().items():
        upper = name.upper()
        if isinstance(value, str) and upper.endswith(_URL_SUFFIXES):
            remember_url_secrets(value)
        elif isinstance(value, str) and upper.endswith(_SECRET_SUFFIXES):
            remember_secret(value)
