"""A Responses request's tools as Chat Completions functions, and the way back from a chat
tool call to the Responses item that names the tool.

Chat has one flat list of functions. A Responses request has function tools, custom
(freeform) tools and ``namespace`` tools, which group function and custom tools under a
name (Codex's ``multi_agent_v1``; MCP servers): a call of one comes back as a
``function_call`` (or ``custom_tool_call``) item whose ``name`` is the tool's and whose
``namespace`` is the group's. So:

- A function tool is a chat function of the same name, parameters and ``strict``.
- A custom tool is a chat function taking one string argument, :data:`CUSTOM_TOOL_ARGUMENT`
  (``"input"``), whose description carries the tool's grammar (chat backends cannot enforce
  a Lark or regex grammar, but the model can read it).
- A tool inside a namespace is a chat function named :func:`qualified` —
  ``<namespace>__<name>`` (two underscores, as MCP tool names are written for chat
  models) — its description led by the namespace's. Two tools that end up with one chat
  name are refused.
- :func:`tool_names` reads a request's tools back: which chat names are custom tools and
  which stand for a tool in a namespace (:meth:`ChatTools.called`), for the answer's items.

Sans-I/O: plain values in, plain values out.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

from ..abc import JSONObject, JSONValue
from .checks import invalid
from .responses_validate import CUSTOM_TOOL_ARGUMENT, EMPTY_PARAMETERS

__all__ = ["NAMESPACE_SEPARATOR", "CallKind", "ChatTools", "chat_tools", "qualified", "tool_names"]

NAMESPACE_SEPARATOR = "__"
CallKind = Literal["function_call", "custom_tool_call"]


def qualified(namespace: str | None, name: str) -> str:
    """The chat function name of tool ``name`` in ``namespace`` (``name`` itself outside
    one)."""
    return f"{namespace}{NAMESPACE_SEPARATOR}{name}" if namespace else name


@dataclass(frozen=True, slots=True)
class _Declared:
    path: str  # the tool's dotted path in the request
    tool: JSONObject
    namespace: str | None
    about: str | None  # the namespace's description

    @property
    def chat_name(self) -> str:
        return qualified(self.namespace, str(self.tool.get("name")))


def _declared(tools: JSONValue) -> Iterator[_Declared]:
    """Every tool of a request's ``tools``, a namespace's own tools in its place."""
    for i, tool in enumerate(tools if isinstance(tools, list) else []):
        if not isinstance(tool, dict):
            continue
        if tool.get("type") != "namespace":
            yield _Declared(f"tools.{i}", tool, None, None)
            continue
        namespace = str(tool.get("name"))
        about = tool.get("description")
        inner = tool.get("tools")
        for j, member in enumerate(inner if isinstance(inner, list) else []):
            if isinstance(member, dict):
                text = about if isinstance(about, str) and about else None
                yield _Declared(f"tools.{i}.tools.{j}", member, namespace, text)


@dataclass(frozen=True, slots=True)
class ChatTools:
    """What a chat tool call's function name stands for in a Responses request."""

    custom: frozenset[str] = frozenset()  # chat names of custom tools
    namespaced: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # → (ns, name)

    def called(self, chat_name: str) -> tuple[CallKind, str, str | None]:
        """``(item type, tool name, namespace)`` of a call of ``chat_name``: a
        ``custom_tool_call`` or a ``function_call``, named as the request named the tool."""
        kind: CallKind = "custom_tool_call" if chat_name in self.custom else "function_call"
        namespace, name = self.namespaced.get(chat_name, (None, chat_name))
        return kind, name, namespace


def tool_names(body: JSONObject, custom_tools: Collection[str] = ()) -> ChatTools:
    """The :class:`ChatTools` of a checked request ``body``; ``custom_tools`` names more
    custom tools (chat names) than the request declares."""
    custom = set(custom_tools)
    namespaced: dict[str, tuple[str, str]] = {}
    for declared in _declared(body.get("tools")):
        name = declared.chat_name
        if declared.tool.get("type") == "custom":
            custom.add(name)
        if declared.namespace is not None:
            namespaced[name] = (declared.namespace, str(declared.tool.get("name")))
    return ChatTools(frozenset(custom), namespaced)


def _custom_parameters(tool: JSONObject) -> JSONObject:
    about = "The tool's whole input, as free text."
    fmt = tool.get("format")
    if isinstance(fmt, dict) and fmt.get("type") == "grammar":
        about += f" It must follow this {fmt.get('syntax')} grammar:\n{fmt.get('definition')}"
    argument: JSONObject = {"type": "string", "description": about}
    return {
        "type": "object",
        "properties": {CUSTOM_TOOL_ARGUMENT: argument},
        "required": [CUSTOM_TOOL_ARGUMENT],
        "additionalProperties": False,
    }


def _description(declared: _Declared) -> str | None:
    own = declared.tool.get("description")
    own = own if isinstance(own, str) and own else None
    if declared.about is None:
        return own
    return f"{declared.about}\n\n{own}" if own else declared.about


def chat_tools(tools: JSONValue) -> list[JSONObject]:
    """The chat ``tools`` for a checked request's ``tools``. Raises
    :class:`~gateway.errors.InvalidRequest` for a tool chat cannot carry (a hosted one) and
    for two tools of one chat name."""
    out: list[JSONObject] = []
    names: set[str] = set()
    for declared in _declared(tools):
        tool, path = declared.tool, declared.path
        kind = tool.get("type")
        if kind not in ("function", "custom"):
            invalid(
                f"{path}.type",
                f"the {kind} tool cannot be translated for this model's backend, which speaks"
                " only chat (only function, custom and namespace tools can)",
            )
        name = declared.chat_name
        if name in names:
            invalid(f"{path}.name", f"another tool is named {name!r}")
        names.add(name)
        function: JSONObject = {"name": name}
        description = _description(declared)
        if description is not None:
            function["description"] = description
        if kind == "custom":
            function["parameters"] = _custom_parameters(tool)
        else:
            function["parameters"] = tool.get("parameters") or EMPTY_PARAMETERS
            if isinstance(tool.get("strict"), bool):
                function["strict"] = tool["strict"]
        out.append({"type": "function", "function": function})
    return out
