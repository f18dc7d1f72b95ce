from pydantic import Field

from vecsync.settings import ConsumerSettings, TextSettings


class EmbedderSettings(ConsumerSettings, TextSettings):
    metrics_port: int = Field(default=9103, ge=0, le=65535)
    embedding_url: str = "http://127.0.0.1:8080"
    embedding_timeout_s: float = Field(default=60.0, gt=0)
    embedding_dim: int = Field(default=384, ge=1)
