"""The ``input`` of a custom (freeform) tool call, decoded from the chat arguments that carry it.

A backend that speaks only chat is given a custom tool as a function of one string argument
(``{"input": "<text>"}``, :data:`~gateway.dialects.responses_request.CUSTOM_TOOL_ARGUMENT`);
its calls' arguments are unwrapped here back into the text the Responses client expects — as
they stream in (:class:`CustomInput`) or whole (:func:`custom_input`). Should a model pass
other arguments, an object of one string is taken for that string, and anything else is
passed on as the raw text.

Sans-I/O: plain values in, plain values out.
"""

from __future__ import annotations

import json
import re
from typing import Literal

from .responses_request import CUSTOM_TOOL_ARGUMENT

__all__ = ["CustomInput", "custom_input"]

_WRAPPED = re.compile(r'\s*\{\s*"' + CUSTOM_TOOL_ARGUMENT + r'"\s*:\s*"')
_HEAD_MAX = 256  # arguments that have not opened the wrapper's string by then never will
_SPECIAL = re.compile(r'["\\]')


class CustomInput:
    """The ``input`` of a custom tool call, decoded as the chat arguments that wrap it
    (``{"input": "<JSON string>"}``) arrive in pieces: :meth:`feed` returns the text decoded
    so far that it had not returned yet, and :meth:`finish` the rest, so the pieces add up to
    the whole input. A JSON escape split between pieces waits for its end (a surrogate pair
    for both halves); only the undecoded rest is kept. Arguments of another shape give
    nothing until :meth:`finish`; a string that is no JSON after all goes on as it is."""

    __slots__ = ("_head", "_sent", "_state", "_tail")

    def __init__(self) -> None:
        self._head: list[str] = []  # the pieces before the string (all of them, for others)
        self._tail = ""  # the string's undecoded rest
        self._sent: list[str] = []
        self._state: Literal["head", "other", "string", "closed", "literal"] = "head"

    def feed(self, piece: str) -> str:
        if self._state == "literal":
            self._sent.append(piece)
            return piece
        if self._state in ("other", "closed"):
            self._head.append(piece)
            return ""
        if self._state == "head":
            self._head.append(piece)
            head = "".join(self._head)
            opening = _WRAPPED.match(head)
            if opening is None:
                self._state = "other" if len(head) > _HEAD_MAX else "head"
                return ""
            self._state, piece = "string", head[opening.end() :]
        self._tail += piece
        end = self._decodable()
        chunk, self._tail = self._tail[:end], self._tail[end:]
        try:
            text = str(json.loads(f'"{chunk}"', strict=False))
        except ValueError:
            text, self._tail, self._state = chunk + self._tail, "", "literal"
        self._sent.append(text)
        return text

    def _decodable(self) -> int:
        """How much of the tail decodes: up to the string's closing quote, or to an escape
        not yet whole."""
        tail, i = self._tail, 0
        while (special := _SPECIAL.search(tail, i)) is not None:
            i = special.start()
            if tail[i] == '"':
                self._state = "closed"
                return i
            escape = tail[i + 1 : i + 2]
            if escape != "u":
                if not escape:
                    return i
                i += 2
                continue
            if i + 6 > len(tail):
                return i
            if "d800" <= tail[i + 2 : i + 6].lower() <= "dbff" and tail[i + 6 : i + 8] in (
                "",
                "\\",
                "\\u",
            ):
                if i + 12 > len(tail):
                    return i  # the other half of a surrogate pair may follow
                i += 6
            i += 6
        return len(tail)

    def finish(self) -> str:
        """The rest of the input: for arguments of another shape, all of it (an escape left
        unfinished at the end of a string cut short is dropped)."""
        if self._state not in ("head", "other"):
            return ""
        rest = _other_shape("".join(self._head))
        self._sent.append(rest)
        return rest

    @property
    def text(self) -> str:
        """The input decoded so far."""
        return "".join(self._sent)


def _other_shape(arguments: str) -> str:
    """A custom tool's input from arguments that are not ``{"input": "..."}``: the one
    string of a one-key object, else the arguments as they are."""
    try:
        doc = json.loads(arguments, strict=False)
    except ValueError:
        return arguments
    if isinstance(doc, dict) and len(doc) == 1:
        (value,) = doc.values()
        if isinstance(value, str):
            return value
    return arguments


def custom_input(arguments: str) -> str:
    """The ``input`` of a custom tool call for the chat ``arguments`` of its call."""
    unwrapped = CustomInput()
    return unwrapped.feed(arguments) + unwrapped.finish()
