"""The long-documents workload of the chaos test (``--long-documents``): documents of 1 to 60 chunks that grow,
shrink, are replaced, deleted and edited inside one chunk while the stages are killed.

The stack runs with CHUNK_TOKENS=20 and CHUNK_OVERLAP_TOKENS=4, so the hash backend splits a text into chunks of
18 words (20 tokens less its two stand-in special tokens), each starting 14 words after the one before: a document
of 60 chunks is 844 words. The workload keeps each document's words, so that it can grow a document by appending,
shrink it by cutting its end (the chunks before the cut keep their text, those past it must go), and change one
word that only one chunk holds (the others keep their text, though the chunks after it may move). The harness's
``compare`` then checks every chunk against the split the hash backend makes (tests/chaos/chunks.py).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

from tests.chaos.chunks import HASH_SPECIAL_TOKENS

CHUNK_TOKENS = 20
CHUNK_OVERLAP = 4
MAX_CHUNKS = 60
CHUNK_WORDS = CHUNK_TOKENS - HASH_SPECIAL_TOKENS
STEP = CHUNK_WORDS - CHUNK_OVERLAP

# What the stack's processes read from their environment to chunk this way (docs/design.md, "Long documents").
STACK_ENVIRONMENT = {"CHUNK_TOKENS": str(CHUNK_TOKENS), "CHUNK_OVERLAP_TOKENS": str(CHUNK_OVERLAP)}

VOCABULARY = (
    "the manual says a reboot clears the cache before the sync restarts and every tenant sees its invoice "
    "again while the router logs each webhook and retries the export with backoff until the scanner reports"
).split()
OWNERS = ["Ann", "Bo", "Chen", "Dara", "Eli"]


def chunks_of_words(count: int) -> int:
    """How many chunks the hash backend makes of a text of ``count`` words."""
    return 1 if count <= CHUNK_WORDS else 1 + -(-(count - CHUNK_WORDS) // STEP)


def joined(words: list[str]) -> str:
    """The words as prose: sentences of nine words, paragraphs of five sentences. A word's separator depends only
    on its place, so changing one word changes nothing else, and cutting or appending keeps what stays."""
    parts = []
    for index, word in enumerate(words):
        parts.append(word)
        if index + 1 < len(words):
            parts.append(".\n\n" if (index + 1) % 45 == 0 else ". " if (index + 1) % 9 == 0 else " ")
    return "".join(parts)


@dataclass
class LongDocument:
    """What the workload last wrote of one document: its subject and the words of its content."""

    subject: str
    words: list[str] = field(default_factory=list)

    def fields(self) -> dict[str, Any]:
        return {"subject": self.subject, "content": joined(self.words)} if self.words else {"subject": self.subject}

    @property
    def subject_words(self) -> int:
        return len(self.subject.split())

    @property
    def chunk_count(self) -> int:
        return chunks_of_words(self.subject_words + len(self.words))


def random_words(rng: random.Random, subject_words: int) -> list[str]:
    """Content for a document of 1 to MAX_CHUNKS chunks: a fifth of them one chunk, the rest 2 to 60 evenly."""
    if rng.random() < 0.2:
        total = rng.randint(subject_words + 1, CHUNK_WORDS)
    else:
        chunks = rng.randint(2, MAX_CHUNKS)
        total = rng.randint(CHUNK_WORDS + (chunks - 2) * STEP + 1, CHUNK_WORDS + (chunks - 1) * STEP)
    return [rng.choice(VOCABULARY) for _ in range(total - subject_words)]


def words_only_in_chunk(document: LongDocument, chunk: int) -> range:
    """The places in the content of the words that chunk ``chunk`` holds and no other chunk does."""
    total = document.subject_words + len(document.words)
    count = document.chunk_count
    first = 0 if chunk == 0 else chunk * STEP + CHUNK_OVERLAP
    end = total if chunk == count - 1 else (chunk + 1) * STEP
    return range(max(first, document.subject_words) - document.subject_words, end - document.subject_words)


def apply_long_workload(
    collection: Any, ids: list[Any], operations: int, duration_s: float, rng: random.Random
) -> dict[str, int]:
    """Random changes of long documents, a third on a small hot set, paced over ``duration_s``; the count of each
    kind of change made.

    A document that is absent is inserted (1 to 60 chunks); one that is present is deleted, replaced (now and then
    by one without text, whose chunks must all go), grown, shrunk, edited inside one chunk, rewritten, or given a
    new owner only (its text unchanged: no chunk is embedded again).
    """
    documents: dict[int, LongDocument] = {}
    made: dict[str, int] = {}
    hot = max(1, len(ids) // 20)
    started = time.monotonic()
    for number in range(operations):
        index = rng.randrange(hot) if rng.random() < 0.35 else rng.randrange(len(ids))
        doc_id, document, roll = ids[index], documents.get(index), rng.random()
        room = CHUNK_WORDS + (MAX_CHUNKS - 1) * STEP - document.subject_words - len(document.words) if document else 0
        if document is None:
            kind = "insert"
            document = documents[index] = LongDocument(f"manual {number}")
            document.words = random_words(rng, document.subject_words)
            collection.insert_one({"_id": doc_id, **document.fields(), "product": rng.choice(VOCABULARY)})
        elif roll < 0.1:
            kind = "delete"
            collection.delete_one({"_id": doc_id})
            del documents[index]
        elif roll < 0.2:
            kind = "replace"
            document = documents[index] = LongDocument(f"replaced {number}")
            document.words = random_words(rng, document.subject_words)
            replacement = {**document.fields(), "owner": rng.choice(OWNERS)}
            if rng.random() < 0.15:
                kind = "replace without text"
                document.subject, document.words = "", []
                replacement = {"owner": rng.choice(OWNERS)}
            collection.replace_one({"_id": doc_id}, replacement)
        elif roll < 0.35 and room > 0:
            kind = "grow"
            more = rng.randint(1, min(room, 20 * STEP))
            document.words += [rng.choice(VOCABULARY) for _ in range(more)]
            collection.update_one({"_id": doc_id}, {"$set": {"content": joined(document.words)}})
        elif roll < 0.5:
            kind = "shrink"
            document.words = document.words[: rng.randrange(len(document.words))] if document.words else []
            change = {"$set": {"content": joined(document.words)}} if document.words else {"$unset": {"content": ""}}
            collection.update_one({"_id": doc_id}, change)
        elif roll < 0.75 and document.words:
            kind = "edit inside one chunk"
            places = words_only_in_chunk(document, rng.randrange(document.chunk_count)) or range(len(document.words))
            place = rng.choice(places)
            document.words[place] = rng.choice([word for word in VOCABULARY if word != document.words[place]])
            collection.update_one({"_id": doc_id}, {"$set": {"content": joined(document.words)}})
        elif roll < 0.85:
            kind = "new owner"
            collection.update_one({"_id": doc_id}, {"$set": {"owner": rng.choice(OWNERS)}})
        else:
            kind = "rewrite"
            document.subject = f"manual {number}"
            document.words = random_words(rng, document.subject_words)
            collection.update_one({"_id": doc_id}, {"$set": document.fields()})
        made[kind] = made.get(kind, 0) + 1
        ahead = started + duration_s * (number + 1) / operations - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    return made
