"""A bad sync definition file stops every service and the CLI at start with exit 2, naming the file, the sync, the key
and what is wrong, every problem at once; before any of them connects to anything (nothing listens at the addresses
given here). tests/unit/test_syncs.py checks each message on its own."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support.servers import BIN

# Every kind of problem the issue names, one file: each must be reported.
BAD = """
syncs:
  - name: tickets
    mongo_collection: tickets
    text_fields: [subject]
    payload_feilds: [product]
  - name: tickets
    mongo_collection: other
    text_fields: []
  - name: articles
    mongo_collection: articles
    text_fields: [body..text]
    payload_fields: [text]
    filter: [published]
"""

EXPECTED = [
    "sync 'tickets' (syncs[0]): key 'payload_feilds' is not known (did you mean 'payload_fields'?)",
    "sync 'tickets': the name is given to 2 syncs",
    "sync 'tickets' (syncs[1]): key 'text_fields' is empty",
    "sync 'articles' (syncs[2]): key 'text_fields': the field path 'body..text' has an empty part",
    "sync 'articles' (syncs[2]): payload field 'text' would overwrite vecsync's own payload key 'text'",
    "sync 'articles' (syncs[2]): key 'filter' must be a MongoDB query document",
]

COMMANDS = {
    "producer": ["vecsync-producer"],
    "embedder-worker": ["vecsync-embedder-worker"],
    "upserter": ["vecsync-upserter"],
    "cli": ["vecsync", "status"],
}


def run(command: list[str], config: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "VECSYNC_CONFIG": str(config),
        # Nothing answers here: a process that connected before reading the file would hang or fail otherwise.
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "MONGO_URI": "mongodb://127.0.0.1:1/?directConnection=true",
        "METRICS_PORT": "0",
        "DATA_DIR": str(tmp_path),
    }
    return subprocess.run([str(BIN / command[0]), *command[1:]], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS.keys())
def test_every_problem_of_a_bad_file_is_named_and_the_process_exits_2(command: list[str], tmp_path: Path) -> None:
    config = tmp_path / "syncs.yaml"
    config.write_text(BAD)
    done = run(command, config, tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    said = done.stdout + done.stderr
    assert f"Invalid sync definitions in VECSYNC_CONFIG {config} (6 problems)" in said
    for problem in EXPECTED:
        assert problem in said, f"{problem!r} not in {said}"
    assert "Traceback" not in said


@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS.keys())
def test_a_missing_file_is_named_and_the_process_exits_2(command: list[str], tmp_path: Path) -> None:
    done = run(command, tmp_path / "nowhere.yaml", tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"VECSYNC_CONFIG names {tmp_path / 'nowhere.yaml'}, which cannot be read" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
