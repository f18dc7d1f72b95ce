"""`make compose-smoke` stops in seconds, naming podman's answer, where podman cannot start a container (its first
step, tests.compose.smoke.check_containers_start), instead of services that never turn healthy minutes later."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tests.compose import smoke

pytestmark = pytest.mark.skipif(
    shutil.which("podman") is None or os.geteuid() != 0, reason="needs podman, run as root as the smoke does"
)


def test_an_engine_that_can_start_containers_passes(tmp_path: Path) -> None:
    smoke.check_containers_start(tmp_path)


def test_an_engine_that_cannot_stops_the_smoke_naming_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A fresh machine's podman: default ulimits above the hard limit on open files, which runc may not set.
    conf = tmp_path / "containers.conf"
    conf.write_text('[containers]\ndefault_ulimits = ["nofile=99999999:99999999"]\n[engine]\nruntime = "runc"\n')
    monkeypatch.setenv("CONTAINERS_CONF", str(conf))
    began = time.monotonic()
    with pytest.raises(smoke.MissingPrerequisite) as refused:
        smoke.check_containers_start(tmp_path)
    message = str(refused.value)
    assert "podman cannot start a container" in message and "rlimit" in message, message
    assert "ulimit -Hn" in message
    assert time.monotonic() - began < 60  # a bound on a hang, not a timing test
