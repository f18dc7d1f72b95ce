"""The layers of the code, written as import-linter contracts in pyproject.toml, hold; and each contract breaks when
an import crosses it (checked on a copy of the packages with one forbidden import added)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
# Each import package and the folder that holds it, as make venv installs them.
PACKAGES = {
    "vecsync": REPO / "libs/vecsync",
    "vecsync_local": REPO / "libs/vecsync-local",
    "producer": REPO / "services/producer",
    "embedder_worker": REPO / "services/embedder-worker",
    "upserter": REPO / "services/upserter",
    "embedding_api": REPO / "services/embedding-api",
}


def lint_imports(pythonpath: list[Path]) -> subprocess.CompletedProcess[str]:
    # --no-cache: a cache written for the real tree must not answer for the copy.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(path) for path in pythonpath)}
    return subprocess.run(
        [str(LINT_IMPORTS), str(REPO / "pyproject.toml"), "--no-cache"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_code_keeps_its_layers() -> None:
    result = lint_imports(list(PACKAGES.values()))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


# Each case: lines added at the end of modules of a copy of the tree (new modules are created), and the one contract
# that this must break.
FORBIDDEN_IMPORTS = {
    "core imports a service": (
        {"vecsync/extra.py": "import upserter.service"},
        "The core library never imports a service or the local stack",
    ),
    "service imports a service": (
        {"producer/extra.py": "from upserter import service"},
        "Services never import each other",
    ),
    "service imports the local stack": (
        {"upserter/extra.py": "import vecsync_local"},
        "No service imports the local stack",
    ),
    "embedding-api imports the consumer": (
        {"embedding_api/extra.py": "from vecsync import consumer"},
        "The embedding-api takes only the core's runtime and settings",
    ),
    "cycle in the core": (
        {"vecsync/extra.py": "import vecsync.consumer", "vecsync/consumer.py": "import vecsync.extra"},
        "No import cycles within a package",
    ),
}


@pytest.mark.parametrize(("additions", "contract"), FORBIDDEN_IMPORTS.values(), ids=FORBIDDEN_IMPORTS.keys())
def test_a_forbidden_import_breaks_its_contract(tmp_path: Path, additions: dict[str, str], contract: str) -> None:
    copies = {}
    for package, folder in PACKAGES.items():
        copies[package] = tmp_path / folder.name
        shutil.copytree(folder / package, copies[package] / package, ignore=shutil.ignore_patterns("__pycache__"))
    for module, line in additions.items():
        path = copies[module.split("/")[0]] / module
        text = path.read_text() if path.exists() else ""
        path.write_text(f"{text}\n{line}\n")

    result = lint_imports(list(copies.values()))

    assert result.returncode != 0, result.stdout
    assert f"{contract} BROKEN" in result.stdout, result.stdout
    assert "1 broken" in result.stdout, result.stdout
