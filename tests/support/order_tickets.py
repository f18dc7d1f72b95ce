"""The order-number dataset of hybrid search's acceptance: 200 support tickets, each naming one order number.

A dense model matches meaning and misses exact tokens, so the question hybrid search must answer is whether a
search for a bare identifier finds the one ticket that names it, without losing what dense search does well. This
module builds that dataset deterministically, for bench/fusion.py (which tunes the fusion) and for the slow
acceptance test (which checks the chosen defaults end to end):

- ``order_tickets()``: the first 200 tickets of samples/support_tickets.jsonl, as the sample loader reads them
  (``date`` a datetime, as MongoDB holds it), each given an ``_id`` (``ticket-007``) and one order number of the
  form ``ORD-48213-KX`` (``order_number``), written into its ``content`` as a sentence among the ticket's own: at its
  start, after a middle sentence or at its end, as "Order ... is the one this is about.", "For reference, our order
  number is ....", or "(ref ...)" closing a sentence. Placement and phrasing vary so that neither the first words
  (which weigh most in a mean-pooled embedding) nor a fixed phrase decide the result. The numbers come from a
  seeded random.Random; their five digits are distinct across tickets (so one term names exactly one ticket),
  while the two letters may repeat, as they would in real data. Every ticket shares the term ``ord``: that is
  the term that occurs in every document and must not drown the rare one.
- ``ORDER_QUERIES``: 20 (ticket ``_id``, query) pairs, the query the bare order number, for tickets spread evenly
  over the set (every tenth, from the sixth).
- ``PARAPHRASE_QUERIES``: 20 (ticket ``_id``, query) pairs, each a hand-written paraphrase of what its ticket is
  about, sharing no identifier and few exact words with it, for tickets whose topic is distinctive among the 200
  (so one answer is right). They check that fusion does not cost dense search its meaning matches.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

from vecsync_local.samples import read_samples

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "support_tickets.jsonl"
TICKETS = 200
SEED = 24  # the number: any fixed seed makes the same dataset on every run
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
PLACES = ("start", "middle", "end")
PHRASINGS = ("order", "number", "ref")

# Tickets (by position in the sample file) whose topic no other of the first 200 shares, with a paraphrase that
# avoids the ticket's identifiers and its distinctive words.
PARAPHRASES: tuple[tuple[int, str], ...] = (
    (10, "a piece seems to have broken off and knocks around within the freshly delivered device"),
    (17, "after upgrading my mobile handset the one-time passcodes from my 2FA generator are all refused"),
    (24, "the display ignores touches at its bottom-right area on a few of our checkout tills"),
    (37, "we need proof that erased customer information also disappears from archived snapshots, and how soon"),
    (44, "prints look faded and what should be blue comes out violet"),
    (57, "please offer a night theme with black backgrounds in the analytics web interface"),
    (63, "handheld readers put in the docking station never top up their power"),
    (70, "the mobile application on a Google handset quits whenever I try to view a picture attached to a job"),
    (84, "employees got a suspicious message impersonating your company, urging them to confirm credentials"),
    (92, "output sheets have dark stripes running from top to bottom"),
    (117, "a repeating calendar series only keeps its initial entry, later instances are gone"),
    (124, "posts in our team chat display unrendered formatting symbols rather than styled text"),
    (134, "the device keeps warning that the ink powder is running out though we fitted a fresh unit last week"),
    (147, "downloading a report as a spreadsheet truncates it at ten thousand lines"),
    (155, "a credential for programmatic access that nobody on our side generated showed up"),
    (162, "the system software upgrade on our printer froze near the end and has not progressed"),
    (170, "give us a list of third-party vendors processing our information and the countries where it is hosted"),
    (183, "hotkeys so agents can handle requests without clicking around"),
    (188, "a withdrawn reservation keeps its time occupied so nobody else can reserve it"),
    (199, "a faint grey film covers each sheet, even the parts meant to stay blank"),
)


def ticket_id(position: int) -> str:
    return f"ticket-{position:03d}"


def order_numbers(count: int, rng: random.Random) -> list[str]:
    """``count`` order numbers ``ORD-ddddd-LL``, their five digits distinct from one another."""
    digits = rng.sample(range(10_000, 100_000), count)
    return [f"ORD-{number}-{rng.choice(LETTERS)}{rng.choice(LETTERS)}" for number in digits]


def sentences(text: str) -> list[str]:
    return [part for part in re.split(r"(?<=[.!?])\s+", text.strip()) if part]


def mention(content: str, number: str, place: str, phrasing: str) -> str:
    """``content`` with a sentence naming ``number`` (or a "(ref ...)" closing one of its sentences) at ``place``."""
    parts = sentences(content)
    at = {"start": 0, "middle": (len(parts) + 1) // 2, "end": len(parts)}[place]
    if phrasing == "ref":
        target = min(at, len(parts) - 1)  # the sentence the reference closes
        sentence = parts[target]
        end = len(sentence.rstrip(".!?"))
        parts[target] = f"{sentence[:end]} (ref {number}){sentence[end:]}"
        return " ".join(parts)
    if phrasing == "order":
        sentence = f"Order {number} is the one this is about."
    else:
        sentence = f"For reference, our order number is {number}."
    return " ".join([*parts[:at], sentence, *parts[at:]])


def order_tickets(count: int = TICKETS) -> list[dict[str, Any]]:
    """The first ``count`` sample tickets, each with its ``_id``, its ``order_number`` and that number in its
    ``content``; the same on every call."""
    tickets = read_samples(SAMPLES)[:count]
    if len(tickets) < count:
        raise ValueError(f"{SAMPLES} holds {len(tickets)} tickets, fewer than the {count} asked for.")
    rng = random.Random(SEED)
    numbers = order_numbers(count, rng)
    built = []
    for position, (ticket, number) in enumerate(zip(tickets, numbers, strict=True)):
        place, phrasing = rng.choice(PLACES), rng.choice(PHRASINGS)
        content = mention(ticket["content"], number, place, phrasing)
        built.append({**ticket, "_id": ticket_id(position), "content": content, "order_number": number})
    return built


def _order_queries() -> list[tuple[str, str]]:
    tickets = order_tickets()
    return [(tickets[position]["_id"], tickets[position]["order_number"]) for position in range(5, TICKETS, 10)]


ORDER_QUERIES: list[tuple[str, str]] = _order_queries()
PARAPHRASE_QUERIES: list[tuple[str, str]] = [(ticket_id(position), query) for position, query in PARAPHRASES]
