import pytest

from embedder_worker.settings import EmbedderSettings
from upserter.settings import UpserterSettings
from vecsync import settings
from vecsync.errors import ConfigurationError


def test_defaults_are_the_documented_names(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = settings.load(EmbedderSettings)
    assert (loaded.stage1_stream, loaded.stage1_group) == ("raw_document_changes", "embedding_processors")
    assert (loaded.stage2_stream, loaded.stage2_group) == ("embedded_documents", "qdrant_upserters")
    assert loaded.text_fields == ["subject", "content"]
    assert loaded.payload_fields == ["product", "customer", "owner", "date", "subject"]
    assert loaded.redis_url == "redis://127.0.0.1:6379/0"


def test_comma_lists_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEXT_FIELDS", "title, body.text ,")
    assert settings.load(EmbedderSettings).text_fields == ["title", "body.text"]


def test_bad_values_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METRICS_PORT", "eighty")
    monkeypatch.setenv("BATCH_SIZE", "0")
    with pytest.raises(ConfigurationError) as error:
        settings.load(EmbedderSettings)
    assert "METRICS_PORT" in str(error.value) and "'eighty'" in str(error.value)
    assert "BATCH_SIZE" in str(error.value)


def test_qdrant_url_and_path_are_exclusive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QDRANT_URL", "http://qdrant:6333")
    monkeypatch.setenv("QDRANT_PATH", "/tmp/q")
    with pytest.raises(ConfigurationError, match="not both"):
        settings.load(UpserterSettings)


def test_secrets_are_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QDRANT_API_KEY", "hunter2")
    monkeypatch.setenv("POINT_LOCK_TTL_MS", "1000")
    with pytest.raises(ConfigurationError) as error:
        settings.load(UpserterSettings)
    assert "hunter2" not in str(error.value)
    assert "POINT_LOCK_TTL_MS" in str(error.value)


def test_secrets_can_come_from_files(tmp_path: pytest.TempPathFactory) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    secrets = Path(str(tmp_path))
    (secrets / "qdrant_api_key").write_text("from-a-file")
    (secrets / "redis_url").write_text("redis://:pw@redis:6379/0")
    env = {**os.environ, "VECSYNC_SECRETS_DIR": str(secrets)}
    env.pop("QDRANT_API_KEY", None)
    env.pop("REDIS_URL", None)
    code = "from upserter.settings import UpserterSettings as S; s = S(); print(s.qdrant_api_key, s.redis_url)"
    output = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert output.split() == ["from-a-file", "redis://:pw@redis:6379/0"]


def test_stream_retention_count_may_differ_per_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAM_RETENTION_COUNT", "5000, embedded_documents=100000")
    loaded = settings.load(EmbedderSettings)
    assert loaded.retention_count("raw_document_changes") == 5000
    assert loaded.retention_count("embedded_documents") == 100_000
    monkeypatch.setenv("STREAM_RETENTION_COUNT", "raw_document_changes=10")
    assert settings.load(EmbedderSettings).retention_count("embedded_documents") == 100_000  # the default
    monkeypatch.setenv("STREAM_RETENTION_COUNT", "raw_document_changes=many")
    with pytest.raises(ConfigurationError, match="STREAM_RETENTION_COUNT"):
        settings.load(EmbedderSettings)


def test_backoff_stays_at_its_ceiling_through_an_outage_of_any_length() -> None:
    from vecsync.backoff import Backoff

    backoff = Backoff(0.5, 30.0)
    delays = [backoff.next_delay() for _ in range(5000)]  # some forty hours of retries at the ceiling
    assert max(delays) <= 30.0 and min(delays[10:]) >= 15.0
