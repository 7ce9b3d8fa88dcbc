"""Config: typed, frozen, loud about every mistake, with the dotted path of each."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import pydantic
import pytest

from gateway.config import ServerSettings, build_config, load_config, usable_cpus
from gateway.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def base(**overrides):
    doc = {
        "backends": {"up": {"type": "openai", "url": "http://127.0.0.1:9/v1"}},
        "routes": {"chat": {"backend": "up"}},
    }
    for dotted, value in overrides.items():
        node = doc
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return doc


def error_of(doc, environ=None) -> str:
    with pytest.raises(ConfigError) as info:
        build_config(doc, environ=environ or {})
    return info.value.message


def test_shipped_gateway_toml_loads() -> None:
    config = load_config(REPO / "gateway.toml", environ={})
    assert config.routes, "the shipped config must serve at least one route"
    for route in config.routes:
        assert route.settings.backend in config.backends


def test_defaults() -> None:
    config = build_config(base(), environ={})
    [route] = config.routes
    assert route.model == "chat"  # the table name when `model` is not given
    assert route.settings.keepalive.interval == 15
    assert route.settings.keepalive.early_headers is True
    assert route.settings.keepalive.non_stream == "off"
    assert config.server.graceful_timeout == 60
    timeouts = config.backends["up"].timeouts
    assert (timeouts.first_byte, timeouts.idle, timeouts.total) == (None, None, None)


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (
            {"routes__chat__keepalive__interval": -1},
            "routes.chat.keepalive.interval: Input should be greater than or equal to 0",
        ),
        ({"routes__chat__keepalive__bogus": 1}, "routes.chat.keepalive.bogus: unknown key"),
        ({"routes__chat__keepalive__non_stream": "spaces"}, "routes.chat.keepalive.non_stream:"),
        ({"routes__chat__keepalive__comment": "a\nb"}, "routes.chat.keepalive.comment:"),
        # Lines split there too, for a client that reads lines (httpx's aiter_lines).
        ({"routes__chat__keepalive__comment": "k\u2028data: x"}, "must be printable ASCII"),
        ({"server__bind": "nohost"}, "server.bind:"),
        ({"server__graceful": 3}, "server.graceful: unknown key"),
        ({"server__header_timeout": 0}, "server.header_timeout: Input should be greater than 0"),
        ({"server__body_idle_timeout": 200}, "`body_idle_timeout` must not exceed `body_timeout`"),
        (
            {"backends__up__timeouts__idle": 0},
            "backends.up.timeouts.idle: Input should be greater than 0",
        ),
        ({"backends__up__url": "ftp://x"}, "backends.up.url:"),
        # httpx's InvalidURL is no ValueError: it used to escape as a traceback (and end a
        # running gateway on a reload).
        ({"backends__up__url": "http://127.0.0.1:1843l/v1"}, "backends.up.url: Value error, "),
        ({"backends__up__url": "http://127.0.0.1:99999/v1"}, "port 99999 is out of range"),
        ({"backends__up__url": "https://u:pw@h/v1"}, "give the key as api_key instead"),
        ({"backends__up__url": "http://h/v1?api-version=2"}, "a base URL has no query"),
        ({"backends__up__api_key": "sk-a\x00b"}, "backends.up.api_key: Value error, holds a"),
        ({"backends__up__api_key": " \n"}, "backends.up.api_key: Value error, is empty"),
        ({"backends__up__colour": "red"}, "backends.up.colour: unknown key"),
        ({"backends__up__type": "nope"}, "backends.up.type: unknown backend type 'nope'"),
        ({"routes__chat__backend": "missing"}, "routes.chat.backend: unknown backend 'missing'"),
        ({"top": 1}, "top: unknown key"),
    ],
)
def test_errors_name_the_dotted_path(overrides, expected) -> None:
    assert expected in error_of(base(**overrides))


def test_a_key_read_from_a_file_loses_its_newline_and_a_refused_one_is_never_shown() -> None:
    config = build_config(base(backends__up__api_key={"env": "KEY"}), environ={"KEY": "sk-1\n"})
    assert config.backends["up"].api_key.get_secret_value() == "sk-1"
    assert "sk-SECRET" not in error_of(base(backends__up__api_key="sk-SECRET\x7f"))


def test_duplicate_public_names_are_rejected() -> None:
    doc = base()
    doc["routes"]["other"] = {"backend": "up", "aliases": ["chat"]}
    assert "routes.other: model name 'chat' is already used by routes.chat" in error_of(doc)


def test_a_model_name_that_is_another_routes_name_is_rejected() -> None:
    # Teams' models name routes by either: a team allowed "fast" would get both routes.
    doc = base()
    doc["routes"] = {
        "fast": {"backend": "up", "model": "llama-8b"},
        "premium": {"backend": "up", "model": "llama-70b", "aliases": ["fast"]},
    }
    assert (
        "routes.premium: model name 'fast' is the name of routes.fast (teams' models name "
        "routes by either)"
    ) in error_of(doc)


def test_env_reference_resolves_secret() -> None:
    doc = base(backends__up__api_key={"env": "UP_KEY"})
    config = build_config(doc, environ={"UP_KEY": "sk-123"})
    key = config.backends["up"].api_key  # type: ignore[attr-defined]
    assert key.get_secret_value() == "sk-123"
    assert "sk-123" not in repr(config.backends["up"])  # secrets never print


def test_missing_env_variable_is_an_error() -> None:
    message = error_of(base(backends__up__api_key={"env": "NOT_SET_ANYWHERE"}))
    assert message == "backends.up.api_key: environment variable NOT_SET_ANYWHERE is not set"


def test_settings_are_frozen() -> None:
    config = build_config(base(), environ={})
    with pytest.raises(pydantic.ValidationError):
        config.routes[0].settings.keepalive.interval = 3  # type: ignore[misc]


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad)


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [("max 100000", None), ("150000 100000", 2), ("50000 100000", 1), ("100000000 100000", None)],
)
def test_auto_workers_are_the_usable_cpus_within_the_cgroup_limit(
    tmp_path: Path, cpu_max: str, expected: int | None
) -> None:
    """ "auto": one worker per CPU the process may run on, but no more than its container's
    CPU limit rounded up (cgroup v2 ``cpu.max``; "max", or a file that is not there: none)."""
    affinity = len(os.sched_getaffinity(0))
    path = tmp_path / "cpu.max"
    path.write_text(cpu_max + "\n")
    assert usable_cpus(path) == (affinity if expected is None else min(expected, affinity))
    assert usable_cpus(tmp_path / "absent") == affinity
    assert ServerSettings(workers=3).worker_count == 3


def test_a_plugin_settings_validator_raising_any_error_is_a_config_error_naming_the_backend(
    tmp_path: Path,
) -> None:
    # pydantic wraps only ValueError and AssertionError; a plugin's validator may raise
    # anything (here the FileNotFoundError of Path.resolve(strict=True)).
    from backends.openai import OpenAIBackend, OpenAISettings
    from gateway.registry import BackendType, Registry

    class StrictSettings(OpenAISettings):
        type: Literal["strict"] = "strict"  # type: ignore[assignment]
        model_file: str

        @pydantic.field_validator("model_file")
        @classmethod
        def _exists(cls, value: str) -> str:
            return str(Path(value).resolve(strict=True))

    class StrictBackend(OpenAIBackend):
        Settings = StrictSettings

    registry = Registry({"strict": BackendType("strict", StrictBackend, "test", "0")})
    doc = base(backends__up={"type": "strict", "url": "http://127.0.0.1:9/v1"})
    doc["backends"]["up"]["model_file"] = str(tmp_path / "absent.gguf")
    with pytest.raises(ConfigError) as info:
        build_config(doc, registry=registry, environ={})
    assert info.value.message.startswith("backends.up: strict settings refused: FileNotFoundError")
    doc["backends"]["up"]["model_file"] = str(tmp_path)
    assert build_config(doc, registry=registry, environ={}).backends["up"].type == "strict"
