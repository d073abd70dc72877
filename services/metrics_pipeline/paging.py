"""Pagination of list RPCs as "Pagination" in common.proto describes it.

``page_size`` 0 means 100, values above 1000 are lowered to 1000, negative ones are refused;
``page_token`` is empty for the first page, else the ``next_page_token`` of the previous
response. A token is the offset of the page plus a fingerprint of the request's other fields,
so a token reused with other filters is refused instead of silently skipping items.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from typing import TypeVar

from phoenixcp.errors import InvalidArgument

__all__ = ["DEFAULT_PAGE_SIZE", "MAX_PAGE_SIZE", "page"]

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def _fingerprint(query: str) -> str:
    return hashlib.sha256(query.encode()).hexdigest()[:12]


def _offset(token: str, query: str) -> int:
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(token.encode("ascii")).decode("ascii")
        offset, fingerprint = text.split(":", 1)
        value = int(offset)
    except (ValueError, UnicodeError, binascii.Error):
        raise InvalidArgument("page_token: not a token this API issued; send the "
                              "next_page_token of the previous response, or nothing for the "
                              "first page", field="page_token") from None
    if fingerprint != _fingerprint(query) or value < 0:
        raise InvalidArgument("page_token: it was issued for a request with other filters; "
                              "use the same fields as the first request, or start again "
                              "without a token", field="page_token")
    return value


def page(items: Sequence[T], *, page_size: int, page_token: str,
         query: str = "") -> tuple[list[T], str]:
    """One page of ``items`` and the token of the next one ("" on the last page).

    ``query`` identifies the request's other fields (filters); InvalidArgument for a negative
    ``page_size`` or a token that is foreign or was issued for another ``query``.
    """
    if page_size < 0:
        raise InvalidArgument(f"page_size: {page_size} is negative; give 1 to {MAX_PAGE_SIZE}, "
                              f"or 0 for {DEFAULT_PAGE_SIZE}", field="page_size")
    size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    start = _offset(page_token, query)
    end = start + size
    if end >= len(items):
        return list(items[start:]), ""
    token = base64.urlsafe_b64encode(f"{end}:{_fingerprint(query)}".encode()).decode("ascii")
    return list(items[start:end]), token
