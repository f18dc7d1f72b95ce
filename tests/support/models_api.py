"""An embedding-api stand-in that serves several models, as EMBEDDING_MODELS does: requests name theirs.

Each model is a hash encoder of its size (its vectors are those of the embedding-api's ``hash-<dim>`` backend) with a
window of its own, so that a test sees which model chunked a text and which embedded it. The first model is the
default, for requests that name none; a request naming a model it does not serve is a 404 naming those it does.
Every request is kept, POST /chunk ones too (``requests``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from embedding_api.backends import HashEncoder
from tests.support.fake_api import FakeApi
from vecsync.chunking import word_spans
from vecsync.messages import pack_vector


@dataclass(frozen=True)
class ServedModel:
    """A model the stand-in serves: its name, its vectors' size, and its window in tokens."""

    name: str
    dim: int
    window: int


class ModelsApi:
    def __init__(self, *models: ServedModel) -> None:
        self.models = {model.name: model for model in models}
        self.default = models[0]
        self.fake = FakeApi()
        self.fake.chunks = False  # chunked here, by the window of the model named
        self.fake.answer = self._answer
        self.url = self.fake.url

    @property
    def requests(self) -> list[tuple[str, str, Any]]:
        return self.fake.requests

    def bodies(self, path: str) -> list[dict[str, Any]]:
        """The JSON bodies of the requests to ``path``, in order."""
        return [body for _method, at, body in self.fake.requests if at == path]

    def vector(self, model: str, text: str) -> list[float]:
        """The vector ``model`` makes of ``text``."""
        return [float(value) for value in HashEncoder(self.models[model].dim).encode([text])[0]]

    def close(self) -> None:
        self.fake.close()

    def _answer(self, method: str, path: str, body: Any) -> tuple[int, object]:
        if method == "GET" and path == "/v1/models":
            return 200, {"object": "list", "data": [{"id": name, "object": "model"} for name in self.models]}
        named = body.get("model") if isinstance(body, dict) else None
        model = self.models.get(named or self.default.name)
        if model is None:
            return 404, {"detail": f"Model {named!r} is not served here; the models served are {list(self.models)}."}
        if path == "/chunk":
            tokens = body.get("tokens") or model.window
            spans = [word_spans(text, tokens - 2, body.get("overlap", 0)) for text in body["texts"]]
            return 200, {"model": model.name, "tokens": tokens, "max_tokens": model.window, "spans": spans}
        if path == "/encode_batch":
            vectors = [pack_vector(self.vector(model.name, text)) for text in body["texts"]]
            return 200, {"embeddings": vectors, "model": model.name, "dim": model.dim}
        if path == "/v1/embeddings":
            vectors = [pack_vector(self.vector(model.name, text)) for text in body["input"]]
            data = [{"object": "embedding", "index": n, "embedding": vector} for n, vector in enumerate(vectors)]
            return 200, {"object": "list", "data": data, "model": model.name}
        return 404, {"detail": "Not Found"}
