"""Topic patterns that can name the identity: ``user.{id}`` is readable by that user only.

A pattern is a shell-style pattern (``*``, ``?``, ``[seq]``, ``[!seq]``, as
:func:`fnmatch.fnmatchcase`) in which ``{id}`` stands for the identity's id and ``{NAME}`` for
its claim ``NAME`` (``{sub}``, ``{tenant}``...). A placeholder matches the value itself,
character for character (a value of ``*`` matches a literal ``*``, never every topic). A
pattern with placeholders never matches for an anonymous client, a client without that claim,
or a server without authentication; a claim that is not a string or an int never matches.

:class:`PatternSet` compiles a list of patterns once: those without placeholders into one
regular expression, the others into fragments joined with the escaped values at each check
and compiled once per identity's values (a bounded cache: a check for a connected identity is a
dict lookup and one ``fullmatch``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from .identity import Identity

__all__ = ["PatternSet", "glob_to_regex"]

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: Compiled identity patterns kept per PatternSet (cleared when full).
MAX_CACHED_PATTERNS = 4096


def glob_to_regex(pattern: str) -> str:
    """The regular expression (unanchored) of a shell-style pattern, as fnmatchcase reads it."""
    out = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            j = i
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                out.append(re.escape(c))
            else:
                body = pattern[i:j].replace("\\", "\\\\")
                i = j + 1
                if body.startswith("!"):
                    body = "^" + body[1:]
                elif body.startswith("^"):
                    body = "\\" + body
                out.append(f"[{body}]")
        else:
            out.append(re.escape(c))
    return "".join(out)


class PatternSet:
    """Patterns compiled for repeated checks against topics and identities.

    Args:
        patterns: shell-style patterns, with ``{id}`` / ``{claim}`` placeholders.
    """

    __slots__ = ("_cache", "_static", "_templates", "patterns")

    def __init__(self, patterns: Iterable[str]) -> None:
        #: The patterns, as given.
        self.patterns = tuple(patterns)
        static = [p for p in self.patterns if "{" not in p]
        self._static: re.Pattern[str] | None = (
            re.compile("|".join(f"(?:{glob_to_regex(p)})" for p in static), re.DOTALL)
            if static
            else None
        )
        self._templates: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = tuple(
            _split_template(p) for p in self.patterns if "{" in p
        )
        self._cache: dict[tuple[int, tuple[str, ...]], re.Pattern[str]] = {}

    def __bool__(self) -> bool:
        return bool(self.patterns)

    @property
    def unconditional(self) -> tuple[str, ...]:
        """The patterns that do not depend on the identity (they grant everyone)."""
        return tuple(p for p in self.patterns if "{" not in p)

    def match(self, topic: str, identity: Identity | None) -> bool:
        """Whether ``topic`` matches one of the patterns for ``identity``."""
        static = self._static
        if static is not None and static.fullmatch(topic) is not None:
            return True
        if not self._templates or identity is None or identity.anonymous:
            return False
        cache = self._cache
        for index, (fragments, names) in enumerate(self._templates):
            values = tuple(_value(identity, name) or "" for name in names)
            if "" in values:
                continue  # a missing claim, or an empty one: never a match
            key = (index, values)
            compiled = cache.get(key)
            if compiled is None:
                parts = [fragments[0]]
                for value, fragment in zip(values, fragments[1:], strict=True):
                    parts.append(re.escape(value))
                    parts.append(fragment)
                if len(cache) >= MAX_CACHED_PATTERNS:
                    cache.clear()
                compiled = cache[key] = re.compile("".join(parts), re.DOTALL)
            if compiled.fullmatch(topic) is not None:
                return True
        return False


def _split_template(pattern: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    fragments: list[str] = []
    names: list[str] = []
    last = 0
    for m in _PLACEHOLDER.finditer(pattern):
        fragments.append(glob_to_regex(pattern[last : m.start()]))
        names.append(m.group(1))
        last = m.end()
    if not names:
        raise ValueError(f"pattern {pattern!r}: braces only around {{id}} or {{claim}}")
    fragments.append(glob_to_regex(pattern[last:]))
    return tuple(fragments), tuple(names)


def _value(identity: Identity, name: str) -> str | None:
    if name == "id":
        return identity.id or None
    value: Any = identity.claims.get(name)
    if isinstance(value, bool):
        return None
    if isinstance(value, (str, int)):
        return str(value) or None
    return None
