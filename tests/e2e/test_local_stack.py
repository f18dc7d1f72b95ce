"""`make run` as a new user meets it: the whole pipeline as separate processes, searched from another terminal.

Kills, outages and concurrent workers are the chaos test's (tests/e2e/test_chaos.py)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.support.servers import free_port, port_open, wait_for
from tests.support.stack import stack_settings
from vecsync.cli.settings import CliSettings
from vecsync.store import open_vector_store

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "samples" / "support_tickets.jsonl"


@pytest.mark.slow
def test_make_run_serves_search_until_ctrl_c(tmp_path: Path) -> None:
    """What a new user does: start the stack, search from another terminal, press Ctrl-C."""
    settings = stack_settings(tmp_path / "data", sample_data=SAMPLES)
    env = {
        "DATA_DIR": str(settings.data_dir),
        "REDIS_URL": settings.redis_url,
        "MONGO_URI": settings.mongo_uri,
        "EMBEDDING_URL": settings.embedding_url,
        "UPSERTER_URL": settings.upserter_url,
        "PRODUCER_METRICS_PORT": str(settings.producer_metrics_port),
        "EMBEDDER_METRICS_PORT": str(settings.embedder_metrics_port),
        "QDRANT_REST_PORT": str(settings.qdrant_rest_port),
        "SAMPLE_DATA": str(SAMPLES),
        "PATH": "/usr/local/bin:/usr/bin:/bin",
    }
    log = tmp_path / "make-run.log"
    with open(log, "wb") as output:
        run = subprocess.Popen(
            [sys.executable, "-m", "vecsync_local"], env=env, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        wait_for(lambda: b"240 documents are searchable" in log.read_bytes(), timeout=400, what=f"make run (log {log})")
        vecsync = str(Path(sys.executable).parent / "vecsync")
        search = subprocess.run(
            [vecsync, "search", "I was charged twice and want my money back", "--limit", "3"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert search.returncode == 0, search.stderr
        lines = [line for line in search.stdout.splitlines() if not line.startswith(" ")]
        assert len(lines) == 3
        assert any(word in lines[0].lower() for word in ("charge", "refund", "billed", "payment")), search.stdout
        status = subprocess.run([vecsync, "status"], env=env, capture_output=True, text=True, timeout=60)
        assert "raw_document_changes / embedding_processors: length 240, lag 0, pending 0" in status.stdout
    finally:
        run.send_signal(signal.SIGINT)
        code = run.wait(120)
    assert code == 0, log.read_text()
    assert log.read_text().rstrip().endswith("Stopped.")


# --- failures, as a new user meets them: the cause on the console, fast, with the right exit status -------------

# Each failure below must be named on the console well within this (the acceptance bound); the launcher must not
# sit in a restart loop or a silent wait.
CAUSE_WITHIN_S = 30


class Launch:
    """`make run` as a subprocess on free ports, with the hash backend, its console captured in one file."""

    def __init__(self, tmp_path: Path, samples: Path | None = None, *, data_dir: Path | None = None, **env: str):
        settings = stack_settings(data_dir or tmp_path / "data")
        self.env = {
            "DATA_DIR": str(settings.data_dir),
            "REDIS_URL": settings.redis_url,
            "MONGO_URI": settings.mongo_uri,
            "EMBEDDING_URL": settings.embedding_url,
            "UPSERTER_URL": settings.upserter_url,
            "PRODUCER_METRICS_PORT": str(settings.producer_metrics_port),
            "EMBEDDER_METRICS_PORT": str(settings.embedder_metrics_port),
            "QDRANT_REST_PORT": str(settings.qdrant_rest_port),
            "EMBEDDING_BACKEND": "hash",
            "SAMPLE_DATA": str(samples or SAMPLES),
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            # Where the packages under test come from, when not from the venv's editable installs (a worktree).
            **({"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}),
            **env,
        }
        self.data_dir = settings.data_dir
        self.console = tmp_path / f"console-{time.monotonic_ns()}.log"
        with open(self.console, "wb") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "vecsync_local"], env=self.env, stdout=output, stderr=subprocess.STDOUT
            )

    def output(self) -> str:
        return self.console.read_text()

    def wait_for_output(self, text: str, timeout: float = CAUSE_WITHIN_S) -> None:
        def shown() -> bool:
            if self.process.poll() is not None and text not in self.output():
                raise AssertionError(f"make run exited with {self.process.returncode}:\n{self.output()}")
            return text in self.output()

        wait_for(shown, timeout=timeout, what=f"{text!r} on the console of make run:\n{self.output()}")

    def exit_status(self, timeout: float = CAUSE_WITHIN_S) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"make run still ran after {timeout} s:\n{self.output()}") from None

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        return self.process.wait(60)

    def vecsync(self, *argv: str) -> subprocess.CompletedProcess[str]:
        vecsync = str(Path(sys.executable).parent / "vecsync")
        return subprocess.run([vecsync, *argv], env=self.env, capture_output=True, text=True, timeout=60)


def write_few_samples(folder: Path) -> Path:
    """Six of the sample documents: enough for a run to show progress, few enough for seconds of work."""
    path = folder / "samples.jsonl"
    path.write_text("".join(SAMPLES.read_text().splitlines(keepends=True)[:6]))
    return path


@pytest.fixture
def few_samples(tmp_path: Path) -> Path:
    return write_few_samples(tmp_path)


def _ports_of(env: dict[str, str]) -> list[int]:
    return [urlsplit(env[name]).port or 0 for name in ("REDIS_URL", "MONGO_URI", "EMBEDDING_URL", "UPSERTER_URL")]


@pytest.mark.parametrize(
    ("setting", "value"),
    [("BATCH_SIZE", "abc"), ("EMBEDDING_BACKEND", "nonsense")],
    ids=["a-consumer-stage", "the-embedding-api"],
)
def test_a_stage_with_a_bad_setting_stops_the_stack_at_once_with_its_own_message(
    tmp_path: Path, few_samples: Path, setting: str, value: str
) -> None:
    """Item 1: a stage that exits 2 would exit 2 again; restarting it only hides its message."""
    run = Launch(tmp_path, few_samples, **{setting: value})
    assert run.exit_status() == 2
    console = run.output()
    assert f"{setting}: " in console and repr(value) in console, console  # the stage's own message
    assert "exited with status 2" in console and "; restarting it" not in console, console
    assert not any(port_open(port) for port in _ports_of(run.env)), "the stack was left running"


def test_every_wait_gives_up_after_startup_timeout_s_and_says_what_the_stage_waits_for(
    tmp_path: Path, few_samples: Path
) -> None:
    """Item 2: STARTUP_TIMEOUT_S bounds the wait for the upserter too, and the timeout names the cause."""
    qdrant = f"http://127.0.0.1:{free_port()}"  # nothing listens there: the upserter waits for it
    run = Launch(tmp_path, few_samples, STARTUP_TIMEOUT_S="10", QDRANT_URL=qdrant)
    started = time.monotonic()
    assert run.exit_status() == 1
    console = run.output()
    assert time.monotonic() - started < CAUSE_WITHIN_S
    assert "after 10 s (STARTUP_TIMEOUT_S) waiting for the upserter" in console, console
    assert "upserter-1" in console and "Qdrant" in console, console  # what the upserter itself says it waits for


@pytest.mark.parametrize(
    ("redis_url", "cause"),
    [
        ("redis://nosuchhost:6379/0", "names host 'nosuchhost'"),
        ("127.0.0.1:6379", "has no scheme"),
    ],
    ids=["another-host", "no-scheme"],
)
def test_a_redis_url_the_local_stack_cannot_serve_is_refused_before_anything_starts(
    tmp_path: Path, few_samples: Path, redis_url: str, cause: str
) -> None:
    """Item 3: the local stack starts its own Redis, so REDIS_URL must name a port on this machine."""
    run = Launch(tmp_path, few_samples, REDIS_URL=redis_url)
    assert run.exit_status() == 2
    console = run.output()
    assert "REDIS_URL" in console and cause in console and "redis://127.0.0.1:6379/0" in console, console
    assert "listening" not in console, "a server was started"


def test_a_port_held_by_another_program_is_named_with_the_stage_and_setting_before_anything_starts(
    tmp_path: Path, few_samples: Path
) -> None:
    """Item 4: every port a stage will bind is checked first, the metrics ports too."""
    settings = stack_settings(tmp_path / "data")
    held = settings.embedder_metrics_port + 1  # the second embedder-worker's
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", held))
        holder.listen()
        run = Launch(
            tmp_path,
            few_samples,
            EMBEDDER_METRICS_PORT=str(settings.embedder_metrics_port),
            PRODUCER_METRICS_PORT=str(settings.producer_metrics_port),
        )
        assert run.exit_status() == 2
    console = run.output()
    assert f"Port {held}" in console and "embedder-worker 2" in console, console
    assert "EMBEDDER_METRICS_PORT" in console and "All stages running" not in console, console
    assert "listening" not in console, "a server was started"


def test_two_stages_given_one_port_are_refused(tmp_path: Path, few_samples: Path) -> None:
    port = free_port()
    run = Launch(tmp_path, few_samples, PRODUCER_METRICS_PORT=str(port), EMBEDDER_METRICS_PORT=str(port))
    assert run.exit_status() == 2
    console = run.output()
    assert f"Port {port}" in console and "PRODUCER_METRICS_PORT" in console, console
    assert "EMBEDDER_METRICS_PORT" in console, console


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> Launch:
    """A first `make run` on a few samples, to the end, its console written to a file (not a terminal)."""
    folder = tmp_path_factory.mktemp("first-run")
    run = Launch(folder, write_few_samples(folder))
    run.wait_for_output("All 6 documents are searchable", timeout=120)
    assert run.stop() == 0, run.output()
    return run


def test_progress_is_printed_as_plain_lines_when_the_console_is_not_a_terminal(first_run: Launch) -> None:
    """Item 11."""
    console = first_run.output()
    assert "\r" not in console and "\x1b" not in console
    assert "Searchable: 6/6" in console.splitlines(), console


def test_the_mongodb_standin_logs_each_line_once(first_run: Launch) -> None:
    """Item 10: the stand-in's log was written twice, to two files."""
    logs = first_run.data_dir / "logs"
    starts = [path.name for path in logs.iterdir() for line in path.read_text().splitlines() if "Starting NX" in line]
    assert starts == ["mongo.log"]


def test_a_point_lost_while_stopped_is_named_with_the_command_that_repairs_it(
    tmp_path: Path, first_run: Launch
) -> None:
    """Item 5: the runbook's "Qdrant lost points" case, met by `make run` resuming."""
    data_dir = tmp_path / "data"
    shutil.copytree(first_run.data_dir, data_dir)
    store = open_vector_store(CliSettings(data_dir=data_dir), data_dir)
    try:
        [lost] = list(store.scroll(limit=1, offset=None)[0])
        store.delete([lost])
    finally:
        store.close()
    run = Launch(tmp_path, Path(first_run.env["SAMPLE_DATA"]), data_dir=data_dir)
    try:
        run.wait_for_output("All stages running", timeout=60)
        run.wait_for_output("vecsync verify --repair")
        assert "5 of 6" in run.output(), run.output()
        repair = run.vecsync("verify", "--repair", "--yes")
        assert repair.returncode == 0, repair.stdout + repair.stderr
        run.wait_for_output("All 6 documents are searchable")
    finally:
        assert run.stop() == 0, run.output()


# --- a sync definition file (VECSYNC_CONFIG) --------------------------------------------------------------------

EXAMPLE_SYNCS = REPO / "samples" / "syncs.example.yaml"
ARTICLES = REPO / "samples" / "kb_articles.jsonl"
STAGES = ("vecsync-producer", "vecsync-embedder-worker", "vecsync-upserter")


def _stage_environments(parent: int) -> dict[str, list[dict[str, str]]]:
    """The environment of each stage process that ``parent`` started, by its program's name."""
    found: dict[str, list[dict[str, str]]] = {}
    for folder in Path("/proc").iterdir():
        try:
            if not folder.name.isdigit() or int((folder / "stat").read_text().rsplit(")", 1)[1].split()[1]) != parent:
                continue
            # A console script runs as `python3 .../vecsync-producer`: the program is the first argument named so.
            names = [Path(arg.decode()).name for arg in (folder / "cmdline").read_bytes().split(b"\0") if arg]
            program = next((name for name in names if name in STAGES), names[0] if names else "")
            entries = (folder / "environ").read_bytes().split(b"\0")
        except OSError:
            continue  # exited meanwhile
        env = dict(entry.decode().partition("=")[::2] for entry in entries if entry)
        found.setdefault(program, []).append(env)
    return found


def _counts(mongo_uri: str, *namespaces: str) -> dict[str, int]:
    import pymongo

    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=5000)
    try:
        return {ns: client[ns.split(".")[0]][ns.split(".", 1)[1]].count_documents({}) for ns in namespaces}
    finally:
        client.close()


def test_make_run_hands_the_definition_file_to_every_stage_and_loads_samples_where_sample_syncs_says(
    tmp_path: Path, few_samples: Path
) -> None:
    """Each sync of samples/syncs.example.yaml gets its samples, in two databases of the one MongoDB stand-in; the
    environment's default collection gets none; every stage and the CLI hint are given the file's absolute path."""
    run = Launch(
        tmp_path,
        few_samples,
        VECSYNC_CONFIG=str(EXAMPLE_SYNCS.relative_to(REPO)),
        SAMPLE_SYNCS=f"tickets, articles={ARTICLES}",
    )
    try:
        run.wait_for_output("Running the 2 syncs of", timeout=120)
        console = run.output()
        assert f"Loaded 6 sample documents from {few_samples} into app.tickets (sync tickets)" in console, console
        assert f"Loaded 8 sample documents from {ARTICLES} into kb.articles (sync articles)" in console, console
        assert "tickets (app.tickets -> tickets), articles (kb.articles -> kb_articles)" in console, console
        assert f"export VECSYNC_CONFIG={EXAMPLE_SYNCS}" in console, console
        assert "searchable" not in console, "with a definition file the stack does not wait for the default sync"
        counts = _counts(run.env["MONGO_URI"], "app.documents", "app.tickets", "kb.articles")
        assert counts == {"app.documents": 0, "app.tickets": 6, "kb.articles": 8}
        stages = _stage_environments(run.process.pid)
        assert {name: len(envs) for name, envs in stages.items() if name in STAGES} == {
            "vecsync-producer": 1,
            "vecsync-embedder-worker": 2,
            "vecsync-upserter": 1,
        }, stages.keys()
        for name in STAGES:
            for env in stages[name]:
                assert env["VECSYNC_CONFIG"] == str(EXAMPLE_SYNCS), name
    finally:
        assert run.stop() == 0, run.output()


def test_make_run_with_a_definition_file_and_no_sample_syncs_loads_no_samples(
    tmp_path: Path, few_samples: Path
) -> None:
    run = Launch(tmp_path, few_samples, VECSYNC_CONFIG=str(EXAMPLE_SYNCS))
    try:
        run.wait_for_output("All stages running", timeout=120)
        assert "no samples are loaded: SAMPLE_SYNCS names the syncs" in run.output(), run.output()
        assert set(_counts(run.env["MONGO_URI"], "app.documents", "app.tickets", "kb.articles").values()) == {0}
    finally:
        assert run.stop() == 0, run.output()


def test_without_a_definition_file_every_stage_is_given_an_empty_vecsync_config(
    tmp_path: Path, few_samples: Path
) -> None:
    """The environment's one sync, whatever VECSYNC_CONFIG the shell that started the stack holds: the stack passes
    exactly what its settings say (an empty value reads as unset)."""
    run = Launch(tmp_path, few_samples)
    try:
        run.wait_for_output("All 6 documents are searchable", timeout=120)
        stages = _stage_environments(run.process.pid)
        for name in STAGES:
            assert stages[name] and all(env["VECSYNC_CONFIG"] == "" for env in stages[name]), name
    finally:
        assert run.stop() == 0, run.output()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"VECSYNC_CONFIG": "{bad}"},
            "Invalid sync definitions in VECSYNC_CONFIG {bad}",
        ),
        ({"VECSYNC_CONFIG": str(EXAMPLE_SYNCS), "SAMPLE_SYNCS": "tickets,faq"}, "SAMPLE_SYNCS names sync 'faq'"),
        ({"SAMPLE_SYNCS": "tickets"}, "but VECSYNC_CONFIG is not set"),
        (
            {"VECSYNC_CONFIG": str(EXAMPLE_SYNCS), "SAMPLE_SYNCS": "articles=nowhere.jsonl"},
            "SAMPLE_SYNCS loads sync 'articles' from nowhere.jsonl, which does not exist",
        ),
    ],
    ids=["a-bad-definition-file", "an-unknown-sample-sync", "sample-syncs-without-a-file", "a-missing-sample-file"],
)
def test_a_bad_definition_file_or_sample_syncs_is_refused_before_anything_starts(
    tmp_path: Path, few_samples: Path, env: dict[str, str], message: str
) -> None:
    bad = tmp_path / "bad-syncs.yaml"
    bad.write_text("syncs:\n  - name: tickets\n    mongo_colection: tickets\n    text_fields: [subject]\n")
    env = {name: value.replace("{bad}", str(bad)) for name, value in env.items()}
    run = Launch(tmp_path, few_samples, **env)
    assert run.exit_status() == 2
    console = run.output()
    assert message.replace("{bad}", str(bad)) in console, console
    assert "listening" not in console, "a server was started"
