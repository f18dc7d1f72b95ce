"""The least-privilege Redis users of docs/security.md, created on a real redis-server for a test."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vecsync.redis_client import connect

SECURITY_DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"


def acl_users() -> dict[str, str]:
    """The least-privilege ACL commands of docs/security.md, by service."""
    text = SECURITY_DOC.read_text()
    lines = [line for line in text.splitlines() if line.startswith("ACL SETUSER vecsync-")]
    return {line.split()[2].removeprefix("vecsync-"): line for line in lines}


@contextlib.contextmanager
def least_privilege_clients(redis_client: Any, url: str) -> Iterator[dict[str, Any]]:
    """A Redis client per service, each logged in as the service's user of docs/security.md; the users are removed
    afterwards."""
    users = acl_users()
    assert set(users) == {"producer", "embedder", "upserter"}
    clients = {}
    for name, line in users.items():
        redis_client.execute_command(*line.replace("PASSWORD", f"pw-{name}").split())
        clients[name] = connect(url.replace("redis://", f"redis://vecsync-{name}:pw-{name}@"))
    try:
        yield clients
    finally:
        for name in users:
            redis_client.execute_command("ACL", "DELUSER", f"vecsync-{name}")
