"""The ports the local stack listens on: read from its settings, and refused before anything starts.

The stack starts its own servers, so every URL must name this machine and a port of its own there; a URL that
names another host or no port, a port two processes want, or one another program holds is refused here, with the
setting to change, rather than met later as a server that cannot bind.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from vecsync.errors import ConfigurationError

# The stack starts its own servers, so every URL must name this machine.
LOCAL_HOSTS = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class Listener:
    """A port a process of the stack will listen on, and the setting that chose it."""

    port: int
    host: str
    who: str
    setting: str

    @classmethod
    def served(cls, url: str, setting: str, who: str) -> Listener:
        """The listener of the server that ``url`` (the value of ``setting``) names."""
        return cls(port_of(url, setting), urlsplit(url).hostname or "", who, setting)


def check_ports(listeners: list[Listener]) -> None:
    """Refuse, before anything starts, a URL that names another machine, a port wanted twice, or one in use."""
    for listener in listeners:
        if listener.host not in LOCAL_HOSTS:
            raise ConfigurationError(
                f"{listener.setting} names host {listener.host!r}, but `make run` starts {listener.who} itself, on "
                f"this machine. Name 127.0.0.1 and a free port there (e.g. {_example(listener.setting)}); to use "
                "servers that run elsewhere, run the services on their own (docs/deployment.md)."
            )
    wanted: dict[int, Listener] = {}
    for listener in listeners:
        other = wanted.setdefault(listener.port, listener)
        if other is not listener:
            raise ConfigurationError(
                f"Port {listener.port} is wanted by both {other.who} ({other.setting}) and {listener.who} "
                f"({listener.setting}). Give each a port of its own."
            )
    for listener in listeners:
        if not _port_free(listener.host, listener.port):
            setting = listener.setting.split()[0]
            raise ConfigurationError(
                f"Port {listener.port}, which {listener.who} would listen on ({listener.setting}), is already in "
                f"use by another program. Stop that program (another `make run`?) or set {setting} so that the port "
                "is free."
            )


def port_of(url: str, setting: str) -> int:
    """The port that ``url``, the value of ``setting``, names explicitly."""
    parsed = urlsplit(url)
    try:
        port = parsed.port
    except ValueError:
        port = None
    if port is None:
        raise ConfigurationError(
            f"{setting} names no port: the local stack starts that server itself, so give its port explicitly "
            f"(e.g. {_example(setting)})."
        )
    return port


def port_open(port: int) -> bool:
    """Whether a server accepts connections on ``port`` of this machine."""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _example(setting: str) -> str:
    return {
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "MONGO_URI": "mongodb://127.0.0.1:27017/?directConnection=true",
        "EMBEDDING_URL": "http://127.0.0.1:8080",
        "UPSERTER_URL": "http://127.0.0.1:9102",
    }[setting]


def _port_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host``:``port`` now; SO_REUSEADDR as servers set it, so TIME_WAIT is free."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host if host != "localhost" else "127.0.0.1", port))
        except OSError:
            return False
        return True
