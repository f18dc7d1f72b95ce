"""The CLI's settings: what every operator command may need, read from the same environment as the services."""

from pydantic import Field

from vecsync.settings import (
    CommonSettings,
    FlowControlSettings,
    MongoSettings,
    QdrantSettings,
    RetentionSettings,
    TextSettings,
)


class CliSettings(CommonSettings, MongoSettings, QdrantSettings, TextSettings, RetentionSettings, FlowControlSettings):
    embedding_url: str = "http://127.0.0.1:8080"
    embedding_api_key: str | None = Field(default=None, repr=False)
    # The upserter that holds an embedded Qdrant store open answers searches for the CLI.
    upserter_url: str = "http://127.0.0.1:9102"
    # The key of the upserter's collection operations; unset, the CLI reads DATA_DIR/upserter-api-key.
    upserter_api_key: str | None = Field(default=None, repr=False)
    http_timeout_s: float = Field(default=30.0, gt=0)
