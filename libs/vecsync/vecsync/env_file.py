"""The warning that `.env`, where the Compose deployment keeps every secret, is tracked by git.

A tracked `.env` is committed with the next `git commit -a` and pushed wherever the repository goes. `.gitignore`
keeps a new one out; one added before (or with `git add -f`) is only found by asking git, which `make run` and the
CLI do at start, in the directory they run in.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ENV_FILE = ".env"


def tracked_env_file(directory: Path | None = None) -> str | None:
    """A warning where ``directory`` (default: the working directory) holds a `.env` that git tracks; else None,
    also where git is not installed or the directory is no repository."""
    folder = directory or Path.cwd()
    if not (folder / ENV_FILE).is_file():
        return None
    git = shutil.which("git")
    if git is None:
        return None
    try:
        answer = subprocess.run(
            [git, "-C", str(folder), "ls-files", "--error-unmatch", ENV_FILE], capture_output=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if answer.returncode != 0:
        return None
    return (
        f"{ENV_FILE} is tracked by git, and it holds the deployment's secrets: the next commit takes them wherever "
        f"the repository goes. Run `git rm --cached {ENV_FILE}`, commit, and change every secret it held "
        "(.gitignore keeps a new one out)."
    )
