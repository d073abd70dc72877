"""Endpoints as a person sees them: in logs, error messages and status output.

An exporter's endpoint may carry credentials (``https://user:secret@host/api/v1/write``: the
remote-write client sends them as ``Authorization: Basic``), and so may a NATS URL
(``nats://user:secret@host:4222``). Whatever shows one to a person shows
:func:`redacted_endpoint` (:func:`redacted_urls` for NATS' comma-separated list) of it, so the
password reaches no log line, exception message, status reply or ``endpoints.json``. Only
the connection itself uses the URL as written.
"""

from __future__ import annotations

from typing import Final

__all__ = ["HIDDEN", "redacted_endpoint", "redacted_urls"]

#: What a password is shown as.
HIDDEN: Final = "***"


def redacted_endpoint(endpoint: str) -> str:
    """``endpoint`` with the password in its user information replaced by ``***`` and the
    rest as written (the user name too, to tell accounts apart):
    ``https://user:***@host/api/v1/write``.

    Takes any string (a URL, an otlp ``HOST:PORT``, a typo) and never raises; one without a
    password comes back unchanged. A password with an unescaped ``/``, ``?`` or ``#`` (base64
    has ``/``) ends the URL's authority early and breaks the URL, but it is still hidden whole:
    when the authority before that character is not ``HOST:PORT``, or an ``@`` follows in the
    path, the user information runs to the last ``@``. The price: a URL with a port and an
    ``@`` in its path (not its query) is shown with the path hidden too. Not caught: a
    password of digits only up to an unescaped ``?`` or ``#`` (it reads as a port).
    """
    scheme, sep, rest = endpoint.partition("://")
    if sep:
        scheme += sep
    else:
        scheme, rest = "", endpoint
    end = _first(rest, "/?#", 0)
    authority = rest[:end]
    at = authority.rfind("@")
    if at < 0 and "@" in rest[end:] and ":" in authority and not authority.startswith("[") and (
            not _is_host_port(authority) or "@" in rest[end:_first(rest, "?#", end)]):
        at = rest.rfind("@")
    if at < 0:
        return endpoint
    user, colon, _ = rest[:at].partition(":")
    if not colon:
        return endpoint
    return f"{scheme}{user}:{HIDDEN}{rest[at:]}"


def redacted_urls(urls: str) -> str:
    """A comma-separated list of URLs (NATS' ``url``), each as :func:`redacted_endpoint`
    shows it."""
    return ",".join(map(redacted_endpoint, urls.split(",")))


def _first(text: str, chars: str, start: int) -> int:
    """Where the first of ``chars`` is in ``text`` from ``start``; its length if none is."""
    return min((i for i in (text.find(c, start) for c in chars) if i >= 0), default=len(text))


def _is_host_port(authority: str) -> bool:
    """Whether ``authority`` (with a colon, not an IPv6 address) reads as ``HOST:PORT``."""
    port = authority.rpartition(":")[2]
    return port.isdigit() or not port
