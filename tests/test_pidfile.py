"""Where a gateway's pid file is, and what a planted file in its way does."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.pidfile import PidFileError, default_pid_path, hold_pid_file


def test_the_default_pid_file_is_one_for_a_file_named_through_a_linked_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `serve --config /link/gateway.toml`, `reload --config gateway.toml` from /link.
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    monkeypatch.chdir(tmp_path / "link")
    named = default_pid_path(tmp_path / "link" / "gateway.toml")
    assert default_pid_path(Path("gateway.toml")) == named
    assert default_pid_path(tmp_path / "real" / "gateway.toml") == named


def test_the_default_pid_file_stays_when_a_configmap_update_repoints_the_file(
    tmp_path: Path,
) -> None:
    # Kubernetes: gateway.toml -> ..data/gateway.toml, ..data -> ..<timestamp>; an update
    # makes a new timestamped directory and repoints ..data.
    for version in ("..v1", "..v2"):
        (tmp_path / version).mkdir()
        (tmp_path / version / "gateway.toml").write_text("")
    (tmp_path / "..data").symlink_to("..v1")
    (tmp_path / "gateway.toml").symlink_to("..data/gateway.toml")
    before = default_pid_path(tmp_path / "gateway.toml")
    (tmp_path / "..data").unlink()
    (tmp_path / "..data").symlink_to("..v2")
    assert default_pid_path(tmp_path / "gateway.toml") == before


def test_a_link_planted_at_the_pid_files_temporary_name_is_not_followed(tmp_path: Path) -> None:
    # The temporary file's name is predictable (in /tmp, by default): whatever stands there
    # is removed and a new file made, never a file opened through a link.
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    path = tmp_path / "gateway.pid"
    (tmp_path / f".gateway.pid.{os.getpid()}").symlink_to(victim)
    with hold_pid_file(path):
        assert path.read_text() == f"{os.getpid()}\n" and not path.is_symlink()
    assert victim.read_text() == "precious\n" and not path.exists()


def test_a_pid_file_that_cannot_be_written_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "absent" / "gateway.pid"
    with pytest.raises(PidFileError, match=r"absent/gateway\.pid: cannot write it"):
        with hold_pid_file(path):
            pass
