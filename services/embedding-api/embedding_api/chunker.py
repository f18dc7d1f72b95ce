"""The split behind POST /chunk: each text's chunk spans, counted in the served model's own tokens.

A text that fits the budget (the model's special tokens included) is one span, ``(0, len(text))``, untrimmed, so a
short document keeps exactly its text. A longer one is split by semantic-text-splitter on paragraphs, then sentences,
then words, with up to ``overlap`` tokens shared by consecutive chunks; its spans are character offsets into the
Python string. The library was chosen against chonkie and langchain-text-splitters by bench/chunkers.py
(bench/results/chunkers.md): exact offsets, every chunk on a paragraph or sentence end, overlap, no dependencies of
its own; chonkie is about four times faster but has no overlap, langchain's offsets are wrong for some chunks.

The hash backend has no tokenizer: its texts are split by whitespace word count (``vecsync.chunking.word_spans``),
with the two stand-in special tokens its encoder counts.

Each served model (EMBEDDING_MODELS) has its own chunker, counting in its own tokens. A chunker needs only the model
folder's tokenizer.json, read in the API's own process (never from the model workers), so it answers while the model
still loads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from embedding_api.backends import HashEncoder, max_seq_length
from embedding_api.served_models import ModelSource, served_models
from embedding_api.settings import EmbeddingApiSettings
from vecsync.chunking import word_spans

if TYPE_CHECKING:
    from semantic_text_splitter import TextSplitter

Span = tuple[int, int]

# A splitter per (capacity, overlap) costs about 30 ms to build (it copies the tokenizer): the few a deployment uses
# are kept, and a client sending many distinct sizes cannot grow the process without bound.
SPLITTERS_KEPT = 8


class TextChunker(Protocol):
    # The identity of the model whose tokens are counted: the name /encode_batch reports.
    model: str
    # The model's window: a chunk may hold at most this many tokens, special tokens included.
    max_tokens: int
    # Tokens the model adds to every text (BERT's [CLS] and [SEP]): a chunk's budget counts them.
    special_tokens: int

    def spans(self, texts: list[str], tokens: int, overlap: int) -> list[list[Span]]:
        """Each text's chunk spans: within ``tokens`` tokens each, consecutive ones sharing up to ``overlap``."""
        ...


class TokenizerChunker:
    """Splits with the model's fast tokenizer (its tokenizer.json) and semantic-text-splitter."""

    def __init__(self, tokenizer_file: Path, model: str, max_tokens: int) -> None:
        from tokenizers import Tokenizer

        if not tokenizer_file.is_file():
            raise FileNotFoundError(
                f"The model folder has no {tokenizer_file.name} ({tokenizer_file}); POST /chunk counts tokens with "
                "the model's fast tokenizer: save the model with one, or use a model folder that has it."
            )
        self.model = model
        self.max_tokens = max_tokens
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        # A tokenizer.json may truncate or pad (all-MiniLM-L6-v2's truncates at 128): a chunk is counted whole.
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.special_tokens = len(self.tokenizer.encode("").ids)
        self._splitters: OrderedDict[tuple[int, int], TextSplitter] = OrderedDict()
        self._lock = threading.Lock()

    def spans(self, texts: list[str], tokens: int, overlap: int) -> list[list[Span]]:
        counts = [len(encoding.ids) for encoding in self.tokenizer.encode_batch(texts)]
        found: list[list[Span]] = [[(0, len(text))] for text in texts]
        long = [index for index, count in enumerate(counts) if count > tokens]
        if long:
            splitter = self._splitter(tokens - self.special_tokens, overlap)
            # One call for all the long texts: the library splits them in parallel.
            for index, chunks in zip(long, splitter.chunk_all_indices([texts[i] for i in long]), strict=True):
                found[index] = [(start, start + len(piece)) for start, piece in chunks]
        return found

    def _splitter(self, capacity: int, overlap: int) -> TextSplitter:
        """A splitter filling chunks up to ``capacity`` tokens *besides* the special tokens: the library's count
        leaves them out for long pieces (bench/results/chunkers.md: chunks of 258 at a capacity of 256)."""
        from semantic_text_splitter import TextSplitter

        key = (capacity, overlap)
        with self._lock:
            splitter = self._splitters.get(key)
            if splitter is None:
                splitter = TextSplitter.from_huggingface_tokenizer(self.tokenizer, capacity, overlap=overlap)
                self._splitters[key] = splitter
                while len(self._splitters) > SPLITTERS_KEPT:
                    self._splitters.popitem(last=False)
            else:
                self._splitters.move_to_end(key)
            return splitter


class WordChunker:
    """The hash backend's split: by whitespace word count, as its encoder counts words plus two stand-in tokens."""

    special_tokens = 2

    def __init__(self, model: str, max_tokens: int) -> None:
        self.model = model
        self.max_tokens = max_tokens

    def spans(self, texts: list[str], tokens: int, overlap: int) -> list[list[Span]]:
        return [word_spans(text, tokens - self.special_tokens, overlap) for text in texts]


def load_chunker(settings: EmbeddingApiSettings) -> TextChunker:
    """The chunker of the default model the settings name."""
    return chunker_for(served_models(settings)[0])


def chunker_for(source: ModelSource) -> TextChunker:
    """The chunker of a served model: its folder's tokenizer.json, or the word split for a hash encoder."""
    if source.folder is None:
        encoder = HashEncoder(source.hash_dim)
        return WordChunker(encoder.name, encoder.max_tokens)
    return TokenizerChunker(source.folder / "tokenizer.json", source.identity, max_seq_length(source.folder))
