"""The backend registry: entry points in, backend types or broken plugins out; a broken
plugin never stops the others. Broken distributions are made as they are installed — a
``.dist-info`` with an ``entry_points.txt`` on the import path."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from backends.openai import OpenAIBackend
from gateway.abc import Backend, BackendSettings, SettingsT
from gateway.registry import ENTRY_POINT_GROUP, declared_settings, load_registry, settings_fields


def install_fake_distribution(site: Path, name: str, entry_points: dict[str, str]) -> None:
    """Make ``name`` look installed on ``site`` with these backend entry points."""
    dist_info = site / f"{name.replace('-', '_')}-1.2.3.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.2.3\n")
    lines = "".join(f"{key} = {value}\n" for key, value in entry_points.items())
    (dist_info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{lines}")


def write_module(site: Path, name: str, source: str) -> None:
    (site / f"{name}.py").write_text(source)


BROKEN_MODULES = {
    "plugin_import_error": "import no_such_module_anywhere\n",
    "plugin_not_a_backend": "class Thing:\n    pass\n",
    "plugin_abstract": ("from gateway.abc import Backend\nclass Half(Backend):\n    pass\n"),
    "plugin_bad_settings": (
        "from contextlib import asynccontextmanager\n"
        "from gateway.abc import Backend\n"
        "class Odd(Backend):\n"
        "    Settings = dict\n"
        "    def open_response(self, request):\n"
        "        raise NotImplementedError\n"
    ),
    "plugin_type_literal": (
        "from typing import Literal\n"
        "from gateway.abc import Backend, BackendSettings\n"
        "class Typo(BackendSettings):\n"
        "    type: Literal['murmurr'] = 'murmurr'\n"
        "class Murmur(Backend[Typo]):\n"
        "    Settings = Typo\n"
        "    def open_response(self, request):\n"
        "        raise NotImplementedError\n"
    ),
    "plugin_reserved_field": (
        "from gateway.abc import Backend, BackendSettings\n"
        "class Own(BackendSettings):\n"
        "    keepalive: bool = True  # the plugin's HTTP keep-alive, say\n"
        "class Clash(Backend[Own]):\n"
        "    Settings = Own\n"
        "    def open_response(self, request):\n"
        "        raise NotImplementedError\n"
    ),
    "plugin_settings_not_declared": (
        "from gateway.abc import Backend, BackendSettings\n"
        "class Mine(BackendSettings):\n"
        "    pass\n"
        "class Wrong(Backend[Mine]):\n"
        "    Settings = BackendSettings\n"
        "    def open_response(self, request):\n"
        "        raise NotImplementedError\n"
    ),
}


@pytest.fixture
def broken_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for module, source in BROKEN_MODULES.items():
        write_module(tmp_path, module, source)
    install_fake_distribution(
        tmp_path,
        "broken-plugins",
        {
            "import-error": "plugin_import_error:Backend",
            "not-a-backend": "plugin_not_a_backend:Thing",
            "abstract": "plugin_abstract:Half",
            "bad-settings": "plugin_bad_settings:Odd",
            "missing-attr": "plugin_not_a_backend:Nothing",
            "settings-not-declared": "plugin_settings_not_declared:Wrong",
            "murmur": "plugin_type_literal:Murmur",
            "clash": "plugin_reserved_field:Clash",
        },
    )
    install_fake_distribution(
        tmp_path, "impostor", {"openai": "trio_gateway_simulator:SimulatorBackend"}
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_broken_plugins_are_reported_by_name_and_the_rest_load(broken_site: Path) -> None:
    registry = load_registry()
    reasons = {(b.name, b.distribution): b.reason for b in registry.broken}
    assert set(reasons) == {
        ("import-error", "broken-plugins"),
        ("not-a-backend", "broken-plugins"),
        ("abstract", "broken-plugins"),
        ("bad-settings", "broken-plugins"),
        ("missing-attr", "broken-plugins"),
        ("settings-not-declared", "broken-plugins"),
        ("murmur", "broken-plugins"),
        ("clash", "broken-plugins"),
        ("openai", "impostor"),
    }
    assert (
        "ModuleNotFoundError: No module named 'no_such_module_anywhere'"
        in reasons[("import-error", "broken-plugins")]
    )
    assert "not a gateway.abc.Backend subclass" in reasons[("not-a-backend", "broken-plugins")]
    assert "does not implement open_response" in reasons[("abstract", "broken-plugins")]
    assert (
        "not a gateway.abc.BackendSettings subclass" in reasons[("bad-settings", "broken-plugins")]
    )
    assert "AttributeError" in reasons[("missing-attr", "broken-plugins")]
    assert reasons[("settings-not-declared", "broken-plugins")] == (
        "plugin_settings_not_declared:Wrong.Settings is BackendSettings, but the class is "
        "declared Backend[Mine]: its settings would not be what it expects"
    )
    assert reasons[("murmur", "broken-plugins")] == (
        "plugin_type_literal:Murmur.Settings.type is Literal['murmurr'], but the entry point "
        "names the type 'murmur': a backend table's `type = 'murmur'` would be refused"
    )
    assert reasons[("clash", "broken-plugins")] == (
        "plugin_reserved_field:Clash.Settings redefines `keepalive`, which the gateway reads "
        "for every backend ([backends.<id>.keepalive]): give the plugin's own setting another "
        "name"
    )
    assert reasons[("openai", "impostor")] == "type 'openai' is already provided by trio-gateway"
    # Built-ins and the example plugins still load; openai is still the real one.
    openai = registry.get("openai")
    assert openai is not None and openai.cls is OpenAIBackend
    assert {"openai", "llamacpp-python", "simulator", "ollama"} <= set(registry.types)


def test_the_settings_type_is_read_from_the_type_argument() -> None:
    class Mine(BackendSettings):
        pass

    class Direct(Backend[Mine]):
        Settings = Mine

    class Inherited(Direct):
        pass

    class Intermediate(Backend[SettingsT]):
        pass

    assert declared_settings(Direct) is Mine
    assert declared_settings(Inherited) is Mine
    assert declared_settings(Intermediate) is BackendSettings
    assert declared_settings(Backend) is BackendSettings
    # Every built-in and example backend declares the settings class it validates with.
    for backend_type in load_registry().types.values():
        assert declared_settings(backend_type.cls) is backend_type.cls.Settings, backend_type


def test_builtins_and_example_plugins_come_from_their_distributions() -> None:
    registry = load_registry()
    assert registry.broken == ()
    found = {name: (t.distribution, t.version) for name, t in registry.types.items()}
    assert found["openai"][0] == "trio-gateway"
    assert found["simulator"] == ("trio-gateway-simulator", "0.1.0")
    assert found["ollama"] == ("trio-gateway-ollama", "0.1.0")


class _Inner(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    depth: int = 3


class _Example(BackendSettings):
    type: Literal["example"] = "example"
    url: str = Field(description="where")
    mode: Literal["fast", "slow"] = "fast"
    key: SecretStr | None = None
    limit: float | None = 2.5
    inner: _Inner = _Inner()
    names: tuple[str, ...] = ()


def test_settings_are_described_with_types_and_defaults() -> None:
    fields = {f.name: (f.type, f.default) for f in settings_fields(_Example)}
    assert fields["url"] == ("str", None)
    assert fields["mode"] == ("'fast' | 'slow'", "'fast'")
    assert fields["key"] == ("SecretStr | None", "none")
    assert fields["limit"] == ("float | None", "2.5")
    assert fields["inner.depth"] == ("int", "3")
    assert fields["names"] == ("tuple[str, ...]", "()")
    assert fields["timeouts.connect"] == ("float | None", "10.0")
    assert fields["admission.queue_full_status"] == ("429 | 503", "429")
    assert fields["keepalive.interval"] == ("float | None", "none")
    assert fields["keepalive.non_stream"] == ("'off' | 'whitespace' | None", "none")
    assert "inner" not in fields
    # Every key the gateway owns says what it is.
    described = {f.name: f.description for f in settings_fields(_Example)}
    assert described["keepalive.comment"] == "the route's `comment`, replaced"


def test_a_config_naming_a_broken_plugins_type_is_told_why_it_cannot_be_used(
    broken_site: Path,
) -> None:
    from gateway.config import build_config
    from gateway.errors import ConfigError

    registry = load_registry()
    doc = {"backends": {"b": {"type": "abstract"}}, "routes": {"r": {"backend": "b"}}}
    with pytest.raises(ConfigError) as broken:
        build_config(doc, registry=registry, environ={})
    assert broken.value.message == (
        "backends.b.type: backend type 'abstract' comes from broken-plugins 1.2.3, which could "
        "not be loaded: plugin_abstract:Half does not implement open_response "
        "(see `gateway plugins`)"
    )
    doc["backends"]["b"]["type"] = "absent"
    with pytest.raises(ConfigError) as unknown:
        build_config(doc, registry=registry, environ={})
    assert "unknown backend type 'absent' (installed: " in unknown.value.message
    assert "install it again after adding one" in unknown.value.message
