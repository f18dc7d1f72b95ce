"""Keeping secrets out of messages and logs: the one place that masks them.

A URL setting (REDIS_URL, MONGO_URI, EMBEDDING_URL, QDRANT_URL, UPSERTER_URL)
may carry a password, and the API-key settings are secrets themselves. Every
message vecsync writes goes through ``redact``: the log formatter of every
process (``RedactingFormatter``), the one-line errors of the services and the
CLI, and the settings' validation errors. It masks the password (or the lone
user part, which may be a token) of every URL it finds, the values of query
parameters named like secrets, and every secret value that ``settings.load``
remembered, wherever it appears, so that a message that names a secret in
another form than a URL (a server echoing a key) is masked too.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote

MASK = "***"

# A URL in free text: a scheme, then everything up to whitespace, a quote or an angle bracket.
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")
# Query parameters whose name says they hold a secret (?password=, &api_key=, &token=...), and the session token that
# MongoDB's authMechanismProperties may carry.
_SECRET_PARAMETER = re.compile(r"(?i)([?&;][^=&#\s]*(?:pass|secret|token|key|credential|signature)[^=&#\s]*=)[^&#\s]*")
_SESSION_TOKEN = re.compile(r"(?i)(AWS_SESSION_TOKEN(?::|%3A))[^,&#\s]*")
# Shorter values are not remembered: masking every occurrence of two letters would garble messages.
_SHORTEST_SECRET = 4

_secrets: set[str] = set()


def redact_url(url: str) -> str:
    """``url`` with its password (or a user part without one) and its secret query values masked, safe to show."""
    scheme, separator, rest = url.partition("://")
    if not separator:  # not a URL, but its user part is all one can tell of it: mask all before the last @
        at = url.rfind("@")
        return _masked_query(url if at < 0 else MASK + url[at:])
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    at = rest.rfind("@", 0, end)
    if at < 0 and "@" in rest and ":" in rest[:end]:
        # A password with an unescaped / ? or #: the authority runs to the last @. It may mask a little of a path.
        at = rest.rfind("@")
    if at >= 0:
        user, colon, _password = rest[:at].partition(":")
        rest = (f"{user}:{MASK}" if colon else MASK) + rest[at:]
    return f"{scheme}://{_masked_query(rest)}"


def redact(text: str) -> str:
    """``text`` with every URL redacted (see redact_url) and every remembered secret masked."""
    text = _URL.sub(lambda match: redact_url(match.group(0)), text)
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def remember_secret(value: str | None) -> None:
    """Mask ``value`` wherever a later message holds it (an API key, say); short values are left alone."""
    if value and len(value) >= _SHORTEST_SECRET:
        _secrets.add(value)


def remember_url_secrets(url: str | None) -> None:
    """Mask the password of ``url`` wherever a later message holds it, as written and percent-decoded."""
    if not url or "://" not in url:
        return
    rest = url.partition("://")[2]
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    at = rest.rfind("@", 0, end)
    if at < 0 and "@" in rest and ":" in rest[:end]:
        at = rest.rfind("@")
    if at < 0:
        return
    _user, colon, password = rest[:at].partition(":")
    if colon:  # a user alone is remembered not: a user name such as "vecsync" would mask too much
        remember_secret(password)
        remember_secret(unquote(password))


def _masked_query(text: str) -> str:
    text = _SECRET_PARAMETER.sub(lambda match: match.group(1) + MASK, text)
    return _SESSION_TOKEN.sub(lambda match: match.group(1) + MASK, text)


class RedactingFormatter(logging.Formatter):
    """A log formatter whose output, traceback included, goes through ``redact``."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))
