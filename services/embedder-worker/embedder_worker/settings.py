"""The embedder-worker's settings: a consumer's, a document's text, and how to reach the embedding-api.

EMBEDDING_MODEL is TextSettings' (the model a sync's collection is built with; unset, the embedding-api's default).
OpenAI-style requests must name a model: they name the one of the collection being written, else EMBEDDING_MODEL,
else OPENAI_DEFAULT_MODEL.
"""

from typing import Literal

from pydantic import Field

from vecsync.settings import ConsumerSettings, TextSettings

# The model OpenAI-style requests name when neither the collection's record nor EMBEDDING_MODEL names one: the
# embedding-api's packaged default; servers of one model ignore it.
OPENAI_DEFAULT_MODEL = "all-MiniLM-L6-v2"


class EmbedderSettings(ConsumerSettings, TextSettings):
    metrics_port: int = Field(default=9103, ge=0, le=65535)
    embedding_url: str = "http://127.0.0.1:8080"
    # vecsync: POST /encode_batch of vecsync's embedding-api. openai: POST /v1/embeddings of any
    # OpenAI-compatible server (vecsync's embedding-api too, TEI, Infinity, a hosted API).
    embedding_api_style: Literal["vecsync", "openai"] = "vecsync"
    # Sent as a bearer token when set (hosted APIs).
    embedding_api_key: str | None = None
    embedding_timeout_s: float = Field(default=60.0, gt=0)
    embedding_dim: int = Field(default=384, ge=1)
    # Texts sent in one request to embed (chunks) or to chunk (documents) at most, within the embedding-api's
    # MAX_TEXTS_PER_REQUEST: a batch of long documents makes several embedding requests.
    embedding_request_texts: int = Field(default=256, ge=1)
    # When a change leaves a document's text as it was in Qdrant, write only its payload: no embedding call.
    skip_unchanged_text: bool = True
