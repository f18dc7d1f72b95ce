"""A `.env` tracked by git is warned of by the CLI (vecsync.env_file): it holds the Compose deployment's secrets."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.servers import free_port
from vecsync.env_file import tracked_env_file

VECSYNC = str(Path(sys.executable).parent / "vecsync")
pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def repository(folder: Path) -> Path:
    subprocess.run(["git", "init", "-q", str(folder)], check=True)
    (folder / ".env").write_text("REDIS_PASSWORD=hunter2-value\n")
    return folder


def git(folder: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(folder), *args], check=True, capture_output=True)


def test_a_tracked_env_file_is_named_and_an_untracked_or_ignored_one_is_not(tmp_path: Path) -> None:
    folder = repository(tmp_path / "deployment")
    assert tracked_env_file(folder) is None  # there, but not added
    (folder / ".gitignore").write_text("/.env\n")
    git(folder, "add", ".")
    assert tracked_env_file(folder) is None  # ignored: `git add .` left it out
    git(folder, "add", "-f", ".env")
    warning = tracked_env_file(folder)
    assert warning is not None and "git rm --cached .env" in warning
    assert tracked_env_file(tmp_path) is None  # no .env, no repository


def test_the_cli_warns_of_a_tracked_env_file_in_its_directory(tmp_path: Path) -> None:
    folder = repository(tmp_path / "deployment")
    git(folder, "add", "-f", ".env")
    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "REDIS_CONNECT_TIMEOUT_S": "1"}
    run = subprocess.run(
        [VECSYNC, "search", "anything", "--limit", "1"], cwd=folder, env=env, capture_output=True, text=True, timeout=60
    )
    assert "warning: .env is tracked by git" in run.stderr
    assert "hunter2-value" not in run.stderr
