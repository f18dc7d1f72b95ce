"""Prometheus and Alertmanager from Debian's packages, started on free local ports for the tests."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.support.servers import Server, free_port, wait_for


def tool(name: str) -> str:
    """The path of a Prometheus tool; skips the test without it, or fails in CI."""
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} is not installed; install Debian's prometheus and prometheus-alertmanager packages"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI is set, so this is a failure)")
    pytest.skip(message)


@contextmanager
def prometheus(workdir: Path, config: dict[str, Any], port: int | None = None) -> Iterator[str]:
    """A Prometheus with ``config`` (its URL is yielded), stopped afterwards."""
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    args = [
        tool("prometheus"),
        f"--config.file={workdir / 'prometheus.yml'}",
        f"--storage.tsdb.path={workdir / 'data'}",
    ]
    args += [f"--web.listen-address=127.0.0.1:{port}"]
    with _serving(Server(args, port, log=workdir / "prometheus.log")) as url:
        yield url


@contextmanager
def alertmanager(workdir: Path, config_file: Path, port: int | None = None) -> Iterator[str]:
    """An Alertmanager with ``config_file`` (its URL is yielded), stopped afterwards."""
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    args = [tool("prometheus-alertmanager"), f"--config.file={config_file}", f"--storage.path={workdir}"]
    # An empty cluster address: otherwise it also binds the gossip port 9094.
    args += [f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="]
    with _serving(Server(args, port, log=workdir / "alertmanager.log")) as url:
        yield url


@contextmanager
def _serving(server: Server) -> Iterator[str]:
    server.start()
    url = f"http://127.0.0.1:{server.port}"
    try:
        wait_for(lambda: requests.get(f"{url}/-/ready", timeout=2).ok, what=f"{url} ready")
        yield url
    finally:
        server.stop()
