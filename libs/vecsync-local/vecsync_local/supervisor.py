"""Supervising the local stack's processes: start each, restart what dies, stop each, and read what it said.

A ``Child`` is one process of the stack and its log; the ``Supervisor`` restarts any child that dies, as a
container runtime's restart policy would, except one that exits with a status no restart can cure: that stops the
stack with ``ChildFailed``, carrying the child's own last words. Which processes run, in which order and when each
counts as ready is the stack's definition (stack.py), not the supervisor's.
"""

from __future__ import annotations

import logging
import re
import signal
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from vecsync.errors import VecsyncError

# The name the console has always shown before the supervisor's warnings (a child restarted, or killed).
log = logging.getLogger("vecsync.localstack")


class Interrupted(Exception):
    """Raised when Ctrl-C arrives while the stack is still starting."""


class ChildFailed(VecsyncError):
    """Raised when a process of the stack exits in a way a restart cannot cure; ``status`` is the launcher's."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Child:
    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    port: int | None = None
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    # Held down on purpose (a fault being injected): the supervisor leaves it alone.
    paused: bool = False
    # How the console names it, e.g. "embedder-worker 2"; its name when empty.
    label: str = ""
    # Where this start's output begins in its log, which earlier runs and starts append to.
    log_offset: int = 0

    @property
    def title(self) -> str:
        return self.label or self.name

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as output:
            self.log_offset = output.tell()
            # Its own process group: Ctrl-C in the terminal reaches only the launcher, which stops children in order.
            self.process = subprocess.Popen(
                self.args, env=self.env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        if not self.alive():
            return
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0f s; killing it", self.name, timeout)
            self.process.kill()
            self.process.wait()

    def output(self) -> list[str]:
        """The lines this start of the process wrote to its log."""
        try:
            with open(self.log_path, "rb") as log_file:
                log_file.seek(self.log_offset)
                text = log_file.read().decode("utf-8", "replace")
        except OSError:
            return []
        return [line.rstrip() for line in text.replace("\r", "\n").splitlines() if line.strip()]

    def cause(self, lines: int = 3) -> list[str]:
        """What the process said last about its failure: its last error lines, else its last lines."""
        output = self.output()
        errors = [line for line in output if _ERROR_LINE.search(line)]
        return (errors or output)[-lines:]

    def latest_warning(self) -> str | None:
        """The last warning or error this start of the process logged, if any."""
        return next((line for line in reversed(self.output()) if _WARNING_LINE.search(line)), None)

    def exit_description(self) -> str:
        assert self.process is not None and self.process.returncode is not None
        code = self.process.returncode
        if code < 0:
            return f"was killed by {signal.Signals(-code).name}"
        return f"exited with status {code}"


# A logged error (" ERROR name: ..."), the last line of a traceback ("OSError: [Errno 98] ..."), or the one line a
# service prints for a bad configuration before its logging is set up.
_ERROR_LINE = re.compile(r" (ERROR|CRITICAL) |^[A-Za-z_][\w.]*(Error|Exception|Exit)\b|^Invalid configuration")
_WARNING_LINE = re.compile(r" (WARNING|ERROR|CRITICAL) ")


class Supervisor:
    """Every child the stack started, in the order it started them, restarted when it dies until ``stopping``.

    ``fatal_exits`` names the exit statuses a restart cannot cure, each with what it means, for the console.
    """

    def __init__(self, fatal_exits: Mapping[int, str], stopping: threading.Event) -> None:
        self.fatal_exits = fatal_exits
        self.stopping = stopping
        self.children: list[Child] = []

    def start(self, child: Child) -> None:
        child.start()
        self.children.append(child)

    def run(self) -> None:
        """Supervise until ``stopping`` is set."""
        while not self.stopping.wait(1.0):
            self.check()

    def check(self) -> None:
        """Restart whatever died, as a container runtime's restart policy would, backing off per process.

        A process that exits with a status no restart can cure stops the stack with ChildFailed instead, with
        its own last words: restarting it only hides them.
        """
        for child in self.children:
            if child.alive() or child.paused or self.stopping.is_set():
                continue
            assert child.process is not None
            code = child.process.returncode
            if code in self.fatal_exits:
                raise self.failure(child, f"({self.fatal_exits[code]}), so restarting it would fail the same way")
            cause = child.cause()
            child.restarts += 1
            log.warning(
                "%s %s%s; restarting it (restart %d, see %s)",
                child.title,
                child.exit_description(),
                f" after: {cause[-1]}" if cause and code > 0 else "",
                child.restarts,
                child.log_path,
            )
            if self.stopping.wait(min(10, child.restarts)):
                return
            child.start()

    def failure(self, child: Child, context: str) -> ChildFailed:
        """The error that stops the stack because ``child`` exited, with its last words, for the console."""
        assert child.process is not None
        code = child.process.returncode
        said = "".join(f"\n  {line}" for line in child.cause()) or " nothing"
        return ChildFailed(
            f"{child.title} {child.exit_description()} {context}. It said:{said}\nIts whole log is {child.log_path}.",
            code if code in self.fatal_exits else 1,
        )


def stop_child(child: Child) -> None:
    """Stop ``child`` if it runs, saying so on the console."""
    if child.alive():
        print(f"Stopping {child.name}", flush=True)
        child.stop()
