"""POST /chunk of the embedding-api: the model's tokenizer (the packaged all-MiniLM-L6-v2's tokenizer.json, no model
loaded), the hash backend's word split, and the requests it refuses."""

import itertools
import json
import re
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from tokenizers import Tokenizer

from embedding_api.app import create_app
from embedding_api.backends import HashEncoder
from embedding_api.chunker import TokenizerChunker, load_chunker
from embedding_api.model_folder import default_model_path
from embedding_api.settings import EmbeddingApiSettings
from vecsync.chunking import word_spans


def limited_settings(**overrides: Any) -> EmbeddingApiSettings:
    """Small limits, to reach them: MAX_CHARS_PER_TEXT among them, which /chunk does not apply."""
    return EmbeddingApiSettings(
        max_texts_per_request=3, max_chars_per_text=20, max_chunk_request_chars=200_000, **overrides
    )


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    """The model's tokenizer, counting whole texts (its tokenizer.json truncates at 128)."""
    found = Tokenizer.from_file(str(Path(default_model_path()) / "tokenizer.json"))
    found.no_truncation()
    found.no_padding()
    return found


@pytest.fixture(scope="module")
def client() -> TestClient:
    # The default backend names the packaged model: /chunk reads its tokenizer.json, and the hash encoder stands in
    # for the model, which /chunk never calls.
    return TestClient(create_app(limited_settings(), HashEncoder(384)))


@pytest.fixture(scope="module")
def hash_client() -> TestClient:
    return TestClient(create_app(limited_settings(embedding_backend="hash"), HashEncoder(384)))


def count(tokenizer: Tokenizer, text: str) -> int:
    """Tokens with the model's special tokens, as the model reads the text."""
    return len(tokenizer.encode(text).ids)


def prose(paragraphs: int, sentences: int) -> str:
    """Distinct sentences (each names its paragraph and place), in paragraphs separated by blank lines."""
    return "\n\n".join(
        " ".join(
            f"Sentence {s} of part {p} explains how the sync keeps record {p * 100 + s} consistent."
            for s in range(sentences)
        )
        for p in range(paragraphs)
    )


def chunk(client: TestClient, texts: list[str], **fields: object) -> dict:  # type: ignore[type-arg]
    response = client.post("/chunk", json={"texts": texts, **fields})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def assert_spans_cover_the_words_in_order(text: str, spans: list[list[int]]) -> None:
    starts = [start for start, _ in spans]
    assert starts == sorted(set(starts)), "spans must move forward"
    assert all(0 <= start < end <= len(text) for start, end in spans)
    for match in re.finditer(r"\S+", text):
        assert any(start <= match.start() and match.end() <= end for start, end in spans), match.group()


def test_a_text_that_fits_is_one_whole_span_untrimmed(client: TestClient, hash_client: TestClient) -> None:
    texts = ["  A short note, with spaces around it.\n\n", "x", ""]
    for api in (client, hash_client):
        body = chunk(api, texts, overlap=32)
        assert body["spans"] == [[[0, len(text)]] for text in texts]


def test_the_budget_counts_the_special_tokens(client: TestClient, tokenizer: Tokenizer) -> None:
    fits = " ".join(["record"] * 62)
    assert count(tokenizer, fits) == 64  # 62 words, one token each, and [CLS] and [SEP]
    assert chunk(client, [fits], tokens=64)["spans"] == [[[0, len(fits)]]]
    over = fits + " record"
    spans = chunk(client, [over], tokens=64)["spans"][0]
    assert len(spans) == 2
    assert all(count(tokenizer, over[start:end]) <= 64 for start, end in spans)


def test_a_long_text_is_split_within_the_budget_on_sentences_with_overlap(
    client: TestClient, tokenizer: Tokenizer
) -> None:
    text = prose(paragraphs=1, sentences=60)  # one paragraph: split on sentences, which overlap
    body = chunk(client, [text], tokens=64, overlap=16)
    assert body["tokens"] == 64 and body["max_tokens"] == 256 and body["model"] == "all-MiniLM-L6-v2"
    spans = body["spans"][0]
    assert len(spans) > 10
    assert all(count(tokenizer, text[start:end]) <= 64 for start, end in spans)
    assert all(text[start:end].rstrip().endswith(".") for start, end in spans)
    assert all(next_start < end for (_, end), (next_start, _) in itertools.pairwise(spans))
    assert all(
        count(tokenizer, text[next_start:end]) - 2 <= 16 for (_, end), (next_start, _) in itertools.pairwise(spans)
    )
    assert_spans_cover_the_words_in_order(text, spans)


def test_long_documents_at_the_model_window_follow_paragraphs(client: TestClient, tokenizer: Tokenizer) -> None:
    # Longer than MAX_CHARS_PER_TEXT (20 here): that limit is not /chunk's.
    texts = [prose(paragraphs=30, sentences=8), "Vorwort. " + "Über Straße, café ✓ 東京 検索 😀 naïve façade. " * 400]
    body = chunk(client, texts, tokens=None, overlap=32)
    assert body["tokens"] == 256
    for text, spans in zip(texts, body["spans"], strict=True):
        assert len(spans) > 3
        assert max(count(tokenizer, text[start:end]) for start, end in spans) <= 256
        assert_spans_cover_the_words_in_order(text, spans)
    paragraph_ends = [end for _, end in body["spans"][0][:-1]]
    assert all(texts[0][end : end + 2] == "\n\n" for end in paragraph_ends)


def test_the_hash_backend_splits_by_words_with_its_two_stand_in_tokens(hash_client: TestClient) -> None:
    text = " ".join(f"word{i}" for i in range(1000))
    body = hash_client.post("/chunk", json={"texts": [text], "tokens": 100, "overlap": 10}).json()
    assert body["model"] == "hash-384" and body["max_tokens"] == 256
    assert body["spans"][0] == [list(span) for span in word_spans(text, 98, 10)]
    assert all(len(text[start:end].split()) + 2 <= 100 for start, end in body["spans"][0])
    assert_spans_cover_the_words_in_order(text, body["spans"][0])


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"texts": ["x"], "tokens": 257}, 422, "tokens=257 is above the model's window, max_tokens=256"),
        ({"texts": ["x"], "tokens": 64, "overlap": 64}, 422, "overlap=64 must be below tokens=64"),
        ({"texts": ["x"], "tokens": 64, "overlap": 62}, 422, "overlap=62 must be below tokens=64"),
        ({"texts": ["x"], "tokens": 2}, 422, "send at least 3"),
        ({"texts": ["x"], "overlap": -1}, 422, "overlap"),
        ({"texts": []}, 422, "at least one text"),
        ({"texts": ["x", 5]}, 422, "texts.1"),
        ({"texts": ["a", "b", "c", "d"]}, 413, "MAX_TEXTS_PER_REQUEST=3"),
        ({"texts": ["x" * 100_000, "y" * 100_001]}, 413, "200001 characters in all; the limit is MAX_CHUNK_REQUEST"),
    ],
)
def test_bad_chunk_requests_get_a_clear_error(
    client: TestClient,
    hash_client: TestClient,
    body: dict,  # type: ignore[type-arg]
    status: int,
    message: str,
) -> None:
    for api in (client, hash_client):
        response = api.post("/chunk", json=body)
        assert response.status_code == status
        assert message in response.json()["detail"]


def test_chunks_are_counted_and_the_route_is_a_known_endpoint(client: TestClient) -> None:
    def chunks_made() -> float:
        line = next(
            line
            for line in client.get("/metrics").text.splitlines()
            if line.startswith("vecsync_embedding_api_chunks_total ")
        )
        return float(line.split()[1])

    before = chunks_made()
    spans = chunk(client, ["short", prose(paragraphs=1, sentences=30)], tokens=64)["spans"]
    assert chunks_made() - before == sum(len(text_spans) for text_spans in spans)
    assert 'vecsync_embedding_requests_total{endpoint="/chunk",status="200"}' in client.get("/metrics").text


def test_chunk_answers_while_the_model_loads() -> None:
    release = threading.Event()

    def load() -> HashEncoder:
        release.wait(10)
        return HashEncoder(384)

    loading = TestClient(create_app(EmbeddingApiSettings(), load=load))
    try:
        assert loading.post("/encode", json={"text": "x"}).status_code == 503
        body = loading.post("/chunk", json={"texts": [prose(paragraphs=4, sentences=10)]}).json()
        assert body["model"] == "all-MiniLM-L6-v2" and len(body["spans"][0]) > 1
    finally:
        release.set()


def test_a_model_path_folder_chunks_with_its_own_tokenizer_and_window(tmp_path: Path, tokenizer: Tokenizer) -> None:
    folder = tmp_path / "small-window-model"
    folder.mkdir()
    shutil.copy(Path(default_model_path()) / "tokenizer.json", folder)
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128}))
    chunker = load_chunker(EmbeddingApiSettings(model_path=folder))
    assert isinstance(chunker, TokenizerChunker)
    assert chunker.max_tokens == 128 and chunker.model.startswith("small-window-model@")
    text = prose(paragraphs=1, sentences=40)
    spans = chunker.spans([text], 128, 0)[0]
    assert len(spans) > 2 and all(count(tokenizer, text[start:end]) <= 128 for start, end in spans)


def test_a_model_folder_without_a_tokenizer_is_answered_503(tmp_path: Path) -> None:
    folder = tmp_path / "slow-tokenizer-only"
    folder.mkdir()
    api = TestClient(create_app(EmbeddingApiSettings(model_path=folder), HashEncoder(384)))
    response = api.post("/chunk", json={"texts": ["x"]})
    assert response.status_code == 503
    assert "has no tokenizer.json" in response.json()["detail"]


def test_concurrent_requests_of_different_sizes_get_what_each_gets_alone(client: TestClient) -> None:
    text = prose(paragraphs=3, sentences=40)
    sizes = [(64, 0), (64, 16), (128, 32), (256, 32)] * 3
    alone = {size: chunk(client, [text], tokens=size[0], overlap=size[1])["spans"] for size in set(sizes)}
    with ThreadPoolExecutor(6) as pool:
        together = list(pool.map(lambda size: chunk(client, [text], tokens=size[0], overlap=size[1])["spans"], sizes))
    assert together == [alone[size] for size in sizes]
