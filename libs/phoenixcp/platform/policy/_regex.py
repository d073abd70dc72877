"""Whether a pattern is a regular expression the contract allows: RE2 syntax.

The pipeline matches with Python's ``re`` (fully anchored, as PromQL), but the contract
(common.proto) says RE2, so a policy must not depend on what only Python accepts: lookaround,
backreferences, conditionals, atomic groups, possessive quantifiers, comments and ``\\Z``.
A pattern that RE2 accepts and Python does not is rare (``\\z``, ``\\C``, ``\\pN``) and is
refused too, since the pipeline could not run it.
"""

from __future__ import annotations

import re

__all__ = ["regex_problem"]

_RE2_HINT = "use RE2 syntax, fully anchored as in PromQL (e.g. api_.* or GET|POST)"

_GROUPS = (
    ("(?<=", "a lookbehind (?<=...)"),
    ("(?<!", "a lookbehind (?<!...)"),
    ("(?=", "a lookahead (?=...)"),
    ("(?!", "a lookahead (?!...)"),
    ("(?P=", "a named backreference (?P=...)"),
    ("(?(", "a conditional (?(...)...)"),
    ("(?>", "an atomic group (?>...)"),
    ("(?#", "a comment (?#...)"),
)


def regex_problem(pattern: str) -> str | None:
    """Why ``pattern`` is not an allowed regular expression, or None when it is."""
    try:
        re.compile(pattern)
    except re.error as exc:
        return f"{pattern!r} is not a valid regular expression ({exc}); {_RE2_HINT}"
    construct = _python_only(pattern)
    if construct is not None:
        return (f"{pattern!r} uses {construct}, which RE2 does not support; {_RE2_HINT}, "
                "without lookaround, backreferences or atomic groups")
    return None


def _python_only(pattern: str) -> str | None:
    """The first construct of ``pattern`` (valid for Python) that RE2 lacks, or None."""
    i, n = 0, len(pattern)
    class_start = -1  # index of the `[` of the character class we are in, else -1
    while i < n:
        c = pattern[i]
        if c == "\\":
            escaped = pattern[i + 1:i + 2]
            if class_start < 0 and escaped.isdigit() and escaped != "0":
                return f"a backreference (\\{escaped})"
            if escaped == "Z":
                return "\\Z (RE2 writes end of text as \\z; patterns are anchored anyway)"
            i += 2
            continue
        if class_start >= 0:
            first = class_start + (2 if pattern[class_start + 1:class_start + 2] == "^" else 1)
            if c == "]" and i > first:
                class_start = -1
        elif c == "[":
            class_start = i
        elif c == "(":
            for opener, name in _GROUPS:
                if pattern.startswith(opener, i):
                    return name
        elif c in "*+?}" and pattern[i + 1:i + 2] == "+":
            return f"a possessive quantifier ({c}+)"
        i += 1
    return None
