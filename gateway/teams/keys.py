"""API keys: made, hashed, recognised. Pure: no I/O.

A key is ``gw-`` and 43 URL-safe characters (256 random bits). The config holds only its
hash, ``sha256:<64 hex>``: a key has the entropy of a secret, not of a password, so one
SHA-256 is as hard to invert as any slow hash would be, and it keeps each request's check
to microseconds. Recognising a key compares its hash with *every* configured hash using
:func:`hmac.compare_digest`, without stopping at a match, so the time taken says nothing
about which key, or how much of one, matched.

What the gateway logs about a key is its fingerprint: the first 12 hex digits of its hash
(the same digits the config's ``sha256:`` entry starts with), never the key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "Credential",
    "HeaderLookup",
    "KeyRing",
    "credential_from_headers",
    "fingerprint",
    "hash_key",
    "is_hash",
    "new_key",
]

PREFIX = "gw-"
_HASH = re.compile(r"sha256:[0-9a-f]{64}")


def new_key() -> str:
    """A fresh key: 256 bits from the OS's CSPRNG."""
    return PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The form the config stores: ``sha256:`` and the hex digest of the key's UTF-8."""
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def is_hash(value: str) -> bool:
    return _HASH.fullmatch(value) is not None


def fingerprint(key_hash: str) -> str:
    """A short, loggable name for a key, from its hash."""
    return key_hash.removeprefix("sha256:")[:12]


class HeaderLookup(Protocol):
    """Request headers, looked up case-insensitively (werkzeug's ``Headers``, a dict of
    lower-case names)."""

    def get(self, key: str, default: str) -> str: ...


@dataclass(frozen=True, slots=True)
class Credential:
    """A key a client presented, and how (``bearer``, ``x-api-key`` or ``basic``)."""

    key: str
    scheme: str

    def __repr__(self) -> str:  # never print the key, even in a traceback
        return f"Credential(scheme={self.scheme!r}, key=<redacted>)"


def credential_from_headers(headers: HeaderLookup) -> Credential | None:
    """The key in ``Authorization: Bearer``, ``x-api-key``, or ``Authorization: Basic``
    (the password; what a browser sends for the status page). ``None`` when there is none.
    """
    auth = headers.get("authorization", "").strip()
    scheme, _, value = auth.partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value:
        return Credential(value, "bearer")
    if scheme.lower() == "basic" and value:
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        _, sep, password = decoded.partition(":")
        return Credential(password, "basic") if sep and password else None
    api_key = headers.get("x-api-key", "").strip()
    if api_key:
        return Credential(api_key, "x-api-key")
    return None


class KeyRing:
    """Key hashes and who owns them. :meth:`owner` runs in time independent of which
    hash matched (and of whether one did) for a given number of hashes."""

    __slots__ = ("_entries",)

    def __init__(self, entries: Iterable[tuple[str, str]]) -> None:
        """``entries``: ``(key_hash, owner)`` pairs; hashes as :func:`hash_key` makes them."""
        self._entries = tuple((h.encode("ascii"), owner) for h, owner in entries)

    def __len__(self) -> int:
        return len(self._entries)

    def owner(self, key: str) -> tuple[str, str] | None:
        """``(owner, fingerprint)`` of ``key``, or ``None`` if no configured hash is its."""
        digest = hash_key(key)
        given = digest.encode("ascii")
        found: str | None = None
        for stored, owner in self._entries:
            if hmac.compare_digest(stored, given) and found is None:
                found = owner
        return None if found is None else (found, fingerprint(digest))
