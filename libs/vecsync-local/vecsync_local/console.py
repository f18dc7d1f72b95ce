"""What ``make run`` shows on the console: the searchable count, and the diagnoses of a wait that makes no progress.

Every failure is told on the console, where the user looks, with its cause; the texts that say what the stages
report and what to run are composed here, from what the stack (stack.py) and its processes' logs (supervisor.py)
tell.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from vecsync.producer_state import Snapshot
from vecsync.redaction import redact
from vecsync.sync import Sync
from vecsync_local.supervisor import Child


class Progress:
    """How many documents are searchable: a bar redrawn in place on a terminal, plain lines anywhere else."""

    PLAIN_EVERY_S = 5.0

    def __init__(self, total: int, stream: Any) -> None:
        self.total = total
        self.stream = stream
        self.terminal = bool(stream.isatty())
        self.shown: int | None = None
        self.shown_at = 0.0
        self.open = False  # a bar is drawn and the cursor is at its end

    def show(self, done: int, snapshot: Snapshot | None = None) -> None:
        """The searchable count, and while the producer snapshots the collection, how far it has read."""
        done = max(done, 0)
        reading = ""
        if snapshot is not None:
            left = snapshot.seconds_left(time.time())
            eta = f", about {left:.0f} s left" if left is not None else ""
            reading = f" (snapshot: {snapshot.published} of about {snapshot.estimated} read{eta})"
        if self.terminal:
            width = 30
            filled = int(width * min(done, self.total) / max(self.total, 1))
            bar = f"[{'#' * filled}{'.' * (width - filled)}]"
            self.stream.write(f"\rSearchable: {bar} {done}/{self.total}{reading}\033[K")
            self.open = True
        elif done != self.shown and (done >= self.total or time.monotonic() - self.shown_at >= self.PLAIN_EVERY_S):
            self.stream.write(f"Searchable: {done}/{self.total}{reading}\n")
            self.shown, self.shown_at = done, time.monotonic()
        self.stream.flush()

    def interrupt(self, message: str) -> None:
        """Print ``message`` on lines of its own; the bar is drawn again below it."""
        self.end()
        self.stream.write(message + "\n")
        self.stream.flush()

    def end(self) -> None:
        if self.open:
            self.stream.write("\n")
            self.stream.flush()
            self.open = False


def what_they_say(children: list[Child]) -> str:
    """For the console: the latest warning of each of ``children`` since it started; of a lone child without
    warnings, its last line, which tells what it is busy with (e.g. exporting the model)."""
    said = [(child, child.latest_warning()) for child in children]
    if len(children) == 1 and said[0][1] is None:
        said = [(children[0], next(iter(children[0].output()[-1:]), None))]
    lines = [f"\n  {child.log_path.name}: {line}" for child, line in said if line]
    if not lines:
        return " Their logs hold no warning."
    return " The latest in the logs:" + "".join(lines)


def still_waiting(what: str, waited_s: float, children: list[Child]) -> str:
    """A wait for ``what`` goes on long: what ``children`` report meanwhile."""
    return f"Still waiting for {what} after {waited_s:.0f} s.{what_they_say(children)}"


def gave_up(what: str, timeout_s: float, children: list[Child], logs: Path) -> str:
    """A wait for ``what`` ran past STARTUP_TIMEOUT_S: what ``children`` report, and where their logs are."""
    return (
        f"Gave up after {timeout_s:.0f} s (STARTUP_TIMEOUT_S) waiting for {what}."
        f"{what_they_say(children)}\nThe logs are in {logs}."
    )


def why_not_searchable(idle: bool, searchable: int, total: int, stalled_s: float, stages: list[Child]) -> str:
    """Why documents stay unsearchable: with the pipeline ``idle``, which points are missing and the command that
    repairs them; else what the stages report, nothing having become searchable for ``stalled_s``."""
    if idle:
        return (
            f" Every change has been processed, yet only {max(searchable, 0)} of {total} documents are "
            "searchable: points are missing from the Qdrant store (lost while the stack was stopped?), or some "
            "documents have no text to embed (TEXT_FIELDS). In another terminal, run `.venv/bin/vecsync verify` "
            "to see which, and `.venv/bin/vecsync verify --repair` to re-embed the missing ones."
        )
    return f" No document became searchable for {stalled_s:.0f} s.{what_they_say(stages)}"


def searchable_gave_up(searchable: int, total: int, timeout_s: float, why: str) -> str:
    """No more documents became searchable within STARTUP_TIMEOUT_S."""
    return (
        f"Only {max(searchable, 0)} of {total} documents became searchable, and none more in the last "
        f"{timeout_s:.0f} s (STARTUP_TIMEOUT_S).{why}"
    )


def all_searchable(total: int) -> str:
    """The stack is ready: what to try from another terminal."""
    return (
        f"All {count(total, 'document')} {'is' if total == 1 else 'are'} searchable. In another terminal, "
        "try:\n"
        '    .venv/bin/vecsync search "refund for a double charge"\n'
        "    .venv/bin/vecsync status\n"
        "Press Ctrl-C to stop."
    )


def syncs_running(config: Path, syncs: list[Sync]) -> str:
    """The stack runs a definition file's syncs: what they are, and the CLI, given the same file, to try."""
    listed = ", ".join(f"{sync.name} ({sync.source} -> {sync.qdrant_collection})" for sync in syncs)
    return (
        f"Running the {count(len(syncs), 'sync')} of {config}: {listed}. In another terminal, try:\n"
        f"    export VECSYNC_CONFIG={config}\n"
        "    .venv/bin/vecsync status\n"
        f'    .venv/bin/vecsync search --sync {syncs[0].name} "what to look for"\n'
        "Press Ctrl-C to stop."
    )


def no_samples_for_syncs() -> str:
    """VECSYNC_CONFIG is set and SAMPLE_SYNCS is not: the definition file's collections are left as they are."""
    return (
        "VECSYNC_CONFIG is set, so no samples are loaded: SAMPLE_SYNCS names the syncs whose empty collections get "
        "them (NAME for SAMPLE_DATA, or NAME=FILE)."
    )


def error(message: str) -> None:
    """An error that stops the stack, on stderr, with secrets redacted."""
    print(f"error: {redact(message)}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """A warning that does not stop the stack, on stderr, with secrets redacted."""
    print(f"warning: {redact(message)}", file=sys.stderr, flush=True)


def count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"
