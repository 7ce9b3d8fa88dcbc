"""The field checks the request validators of every dialect share: each names the bad
field by its dotted path (``messages.2.content.0``), as ``param`` and at the start of the
message, since an error shape without ``param`` (Anthropic's) shows the message alone.

Sans-I/O: plain values in, plain values out.
"""

from __future__ import annotations

from typing import NoReturn

from ..abc import JSONObject, JSONValue
from ..errors import InvalidRequest, MissingField

__all__ = ["array_at", "invalid", "missing", "object_at", "path_at", "required", "string_at"]


def invalid(path: str, problem: str) -> NoReturn:
    """Refuse the field at ``path`` for ``problem``."""
    raise InvalidRequest(f"{path}: {problem}", param=path)


def missing(path: str) -> NoReturn:
    """Refuse the request for lack of the field at ``path``."""
    raise MissingField(f"{path}: field required", param=path)


def path_at(path: str, key: str) -> str:
    """The path of ``key`` inside the object at ``path`` (``""`` for the body)."""
    return f"{path}.{key}" if path else key


def object_at(value: JSONValue, path: str) -> JSONObject:
    if not isinstance(value, dict):
        invalid(path, "must be an object")
    return value


def array_at(value: JSONValue, path: str) -> list[JSONValue]:
    if not isinstance(value, list):
        invalid(path, "must be an array")
    return value


def required(doc: JSONObject, key: str, path: str, *, null_is_missing: bool) -> JSONValue:
    """``doc[key]``; absent, it is missing — and so is ``null`` where ``null_is_missing``
    (else ``null`` is a value, for the caller's type check to refuse)."""
    if key not in doc or (null_is_missing and doc[key] is None):
        missing(path_at(path, key))
    return doc[key]


def string_at(
    doc: JSONObject, key: str, path: str, *, null_is_missing: bool, nonempty: bool = False
) -> str:
    """``doc[key]``, required (as :func:`required`) and a string (not empty where
    ``nonempty``)."""
    value = required(doc, key, path, null_is_missing=null_is_missing)
    if not isinstance(value, str):
        invalid(path_at(path, key), "must be a string")
    if nonempty and not value:
        invalid(path_at(path, key), "must not be empty")
    return value
