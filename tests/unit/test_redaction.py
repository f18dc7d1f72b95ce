"""No setting that can hold a secret reaches a message or a log with it: validation errors, logs, connection errors.

Each URL setting carries the password PASSWORD; each API-key setting the key KEY.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from typing import Any

import pytest

from embedder_worker.embedding_client import EmbeddingClient
from embedder_worker.settings import EmbedderSettings
from producer.settings import ProducerSettings
from tests.support.servers import BIN, free_port
from upserter.settings import UpserterSettings
from vecsync import settings
from vecsync.cli import main as cli
from vecsync.cli.settings import CliSettings
from vecsync.errors import ConfigurationError, TransientError
from vecsync.runtime import setup_logging

PASSWORD = "S3cret-pw"
KEY = "k3y-0123456789abcdef"


def closed_port() -> int:
    return free_port()


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "REDIS_URL",
        "MONGO_URI",
        "EMBEDDING_URL",
        "QDRANT_URL",
        "QDRANT_PATH",
        "UPSERTER_URL",
        "QDRANT_API_KEY",
        "UPSERTER_API_KEY",
        "EMBEDDING_API_KEY",
    ):
        monkeypatch.delenv(name, raising=False)


# --- Settings validation ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "name", "value"),
    [
        (ProducerSettings, "REDIS_URL", f"http://user:{PASSWORD}@redis:6379/0"),
        (ProducerSettings, "REDIS_URL", f"redis//:{PASSWORD}@redis:6379/0"),
        (ProducerSettings, "MONGO_URI", f"mongo://vecsync:{PASSWORD}@mongo:27017/?replicaSet=rs0"),
        (CliSettings, "MONGO_URI", f"mysql://vecsync:{PASSWORD}@mongo/"),
    ],
)
def test_a_bad_url_setting_is_named_without_its_password(
    monkeypatch: pytest.MonkeyPatch, cls: type[Any], name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as error:
        settings.load(cls)
    message = str(error.value)
    assert name in message
    assert PASSWORD not in message
    if "://" in value:
        assert "***@" in message, "the URL is still shown, to tell which one is wrong"


@pytest.mark.parametrize("name", ["UPSERTER_API_KEY", "QDRANT_API_KEY"])
def test_a_bad_key_setting_is_named_without_its_value(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, "short")  # UPSERTER_API_KEY needs 16 characters; QDRANT_API_KEY is fine
    monkeypatch.setenv("POINT_LOCK_TTL_MS", "1000")  # another bad setting, so that loading fails either way
    with pytest.raises(ConfigurationError) as error:
        settings.load(UpserterSettings)
    assert "short" not in str(error.value)


# --- Logs ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{PASSWORD}@redis:6379/0",
        f"rediss://default:{PASSWORD}@redis:6380/0",
        f"mongodb://vecsync:{PASSWORD}@m1:27017,m2:27017/?replicaSet=rs0&authSource=admin",
        f"mongodb+srv://vecsync:{PASSWORD}@cluster0.example.net/",
        f"http://user:{PASSWORD}@embedding-api:8080",
        f"https://user:{PASSWORD}@qdrant:6333",
        f"http://user:{PASSWORD}@upserter:9102",
        f"redis://:{PASSWORD.replace('-', '@')}@redis:6379/0",
        f"redis://:{PASSWORD.replace('-', '/')}@redis:6379/0",
        f"http://qdrant:6333/?api_key={PASSWORD}",
        f"mongodb://m1/?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:{PASSWORD}",
    ],
)
def test_every_log_line_masks_the_passwords_of_urls(capsys: pytest.CaptureFixture[str], url: str) -> None:
    setup_logging("INFO")
    log = logging.getLogger("vecsync.test")
    log.info("connecting to %s", url)
    try:
        raise OSError(f"could not reach {url}")
    except OSError:
        log.exception("failed")
    logging.getLogger().handlers.clear()
    err = capsys.readouterr().err
    assert "connecting to" in err and "could not reach" in err
    assert PASSWORD.split("-")[0] not in err, err
    assert err.count("***") >= 2, err  # the log line and the exception's message


def test_the_services_log_their_urls_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each service logs where it connects at start. Redis is closed, so each stops trying to reach it; QDRANT_URL is
    # logged by the upserter, EMBEDDING_URL by the embedder-worker, REDIS_URL by both.
    port = closed_port()
    common = {"REDIS_URL": f"redis://:{PASSWORD}@127.0.0.1:{port}/0", "METRICS_PORT": "0"}
    cases = {
        "vecsync-embedder-worker": {"EMBEDDING_URL": f"http://user:{PASSWORD}@127.0.0.1:{port}"},
        "vecsync-upserter": {"QDRANT_URL": f"http://user:{PASSWORD}@127.0.0.1:{port}"},
    }
    for command, env in cases.items():
        process = subprocess.Popen(
            [str(BIN / command)],
            env={**_base_env(), **common, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            output, _ = process.communicate(timeout=8)
        except subprocess.TimeoutExpired:
            process.terminate()
            output, _ = process.communicate(timeout=30)
        assert "***@127.0.0.1" in output, output
        assert PASSWORD not in output, output


def _base_env() -> dict[str, str]:
    import os

    return {key: value for key, value in os.environ.items() if not key.upper().startswith(("QDRANT_", "EMBEDDING_"))}


# --- Connection errors ----------------------------------------------------------------------------------------------


def test_an_unreachable_embedding_api_is_named_without_its_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBEDDING_URL", f"http://user:{PASSWORD}@127.0.0.1:{closed_port()}")
    client = EmbeddingClient.from_settings(settings.load(EmbedderSettings))
    with pytest.raises(TransientError) as error:
        client.embed(["text"])
    assert "***@127.0.0.1" in str(error.value)
    assert PASSWORD not in str(error.value)


@pytest.mark.parametrize(
    ("name", "value", "command", "named"),
    [
        ("REDIS_URL", f"redis://:{PASSWORD}@127.0.0.1:{{port}}/0", ["status"], False),  # redis-py names the host
        ("EMBEDDING_URL", f"http://user:{PASSWORD}@127.0.0.1:{{port}}", ["search", "printer"], True),
        ("MONGO_URI", f"mongo://vecsync:{PASSWORD}@127.0.0.1:{{port}}/", ["status"], True),
    ],
)
def test_the_cli_names_what_it_cannot_reach_without_its_password(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Any,
    name: str,
    value: str,
    command: list[str],
    named: bool,
) -> None:
    from vecsync.store.folder import FolderLock

    monkeypatch.setenv(name, value.format(port=closed_port()))
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    monkeypatch.setenv("UPSERTER_API_KEY", KEY)
    monkeypatch.setenv("UPSERTER_URL", monkeypatch_value(name, value))
    # Another process holds the embedded store, as an upserter does, so the CLI has to reach the upserter.
    lock = FolderLock(tmp_path / "qdrant")
    try:
        status = cli.main(command)
    finally:
        lock.release()
    out, err = capsys.readouterr()
    assert status != 0
    assert PASSWORD not in out + err, err
    assert err.startswith("error: ") and ("***@127.0.0.1" in err) is named, err


def test_an_upserter_that_does_not_answer_is_named_without_its_password(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    from vecsync.cli.store import open_store
    from vecsync.store.folder import FolderLock

    monkeypatch.setenv("UPSERTER_URL", f"http://user:{PASSWORD}@127.0.0.1:{closed_port()}")
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    lock = FolderLock(tmp_path / "qdrant")  # held, as by an upserter: the CLI must reach the upserter
    try:
        with pytest.raises(ConfigurationError) as error:
            open_store(settings.load(CliSettings))
    finally:
        lock.release()
    assert "UPSERTER_URL=http://user:***@127.0.0.1" in str(error.value)
    assert PASSWORD not in str(error.value)


def monkeypatch_value(name: str, value: str) -> str:
    """UPSERTER_URL: the value under test, else an upserter that does not answer either."""
    return value.format(port=closed_port()) if name == "UPSERTER_URL" else f"http://127.0.0.1:{closed_port()}"


@pytest.mark.parametrize(
    ("module", "cls", "name"),
    [
        ("embedder_worker.settings", "EmbedderSettings", "EMBEDDING_API_KEY"),
        ("vecsync.cli.settings", "CliSettings", "EMBEDDING_API_KEY"),
        ("embedding_api.settings", "EmbeddingApiSettings", "EMBEDDING_API_KEY"),
        ("upserter.settings", "UpserterSettings", "QDRANT_API_KEY"),
        ("vecsync.cli.settings", "CliSettings", "QDRANT_API_KEY"),
        ("upserter.settings", "UpserterSettings", "UPSERTER_API_KEY"),
        ("vecsync.cli.settings", "CliSettings", "UPSERTER_API_KEY"),
    ],
)
def test_an_api_key_echoed_by_a_server_is_masked(
    monkeypatch: pytest.MonkeyPatch, module: str, cls: str, name: str
) -> None:
    import importlib

    from vecsync.redaction import redact

    key = f"{name.lower()}-{cls}-0123456789"  # one of its own per case: a key remembered before cannot pass it
    monkeypatch.setenv(name, key)
    settings.load(getattr(importlib.import_module(module), cls))
    assert redact(f"The server answered 401: invalid key {key!r}") == "The server answered 401: invalid key '***'"


def test_the_cli_masks_a_bad_redis_url_in_a_subprocess(tmp_path: Any) -> None:
    env = {**_base_env(), "REDIS_URL": f"http://user:{PASSWORD}@redis:6379/0", "DATA_DIR": str(tmp_path)}
    result = subprocess.run(
        [str(BIN / "vecsync"), "status"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2, result.stderr
    assert "REDIS_URL" in result.stderr and PASSWORD not in result.stderr + result.stdout


def test_a_secret_in_a_crash_is_masked(tmp_path: Any) -> None:
    # A failure nobody expected still prints its traceback, with the URL in it masked.
    code = (
        "from vecsync.runtime import run_main\n"
        f"def main():\n    raise RuntimeError('lost redis://:{PASSWORD}@redis:6379/0')\n"
        "run_main(main)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert "RuntimeError" in result.stderr and "redis://:***@redis:6379/0" in result.stderr
    assert PASSWORD not in result.stderr


def test_a_dead_letters_reason_holds_no_password() -> None:
    # Dead letters are written to Redis and shown by `vecsync dlq`, past every log formatter.
    from vecsync.dead_letters import dead_letter_fields

    letter = dead_letter_fields(
        stream="raw_document_changes",
        group="embedding_processors",
        entry_id="1-0",
        fields={"mongo_id": "d"},
        error=f"embedding-api unreachable at http://user:{PASSWORD}@api:8080/encode_batch",
        deliveries=5,
        consumer="w",
    )
    assert letter["error"] == "embedding-api unreachable at http://user:***@api:8080/encode_batch"
