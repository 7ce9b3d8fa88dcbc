"""Where a gateway's pid file is, and what a planted file in its way does."""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway import pidfile
from gateway.pidfile import PidFileError, default_pid_path, hold_pid_file, signal_holder


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


@pytest.fixture
def closed_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory the gateway may not make a file in (a root-owned ``/run``), with a
    ``gateway.pid`` made for it there. Root ignores directory permissions, so for root a
    new file in it is refused as the kernel refuses it to anyone else (EACCES); any other
    user gets a real read-only directory."""
    closed = tmp_path / "run"
    closed.mkdir()
    (closed / "gateway.pid").write_text("4242\n")  # made for the gateway, as by systemd
    if os.geteuid() != 0:
        closed.chmod(0o555)
        yield closed
        closed.chmod(0o755)
        return
    real_open = os.open

    def refusing_new_files(name: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & os.O_CREAT and Path(name).parent == closed:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(name))
        return real_open(name, flags, *args, **kwargs)

    monkeypatch.setattr(pidfile.os, "open", refusing_new_files)
    yield closed


def test_a_file_made_for_the_gateway_where_it_cannot_make_one_is_written_in_place(
    closed_dir: Path,
) -> None:
    path = closed_dir / "gateway.pid"
    with hold_pid_file(path):
        assert path.read_text() == f"{os.getpid()}\n"
        assert signal_holder(path, 0) == os.getpid()  # locked: `gateway reload` finds it
        with open(path) as other, pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert path.read_text() == ""  # kept (it cannot be removed), with no pid to signal
    with pytest.raises(PidFileError, match="stale"):
        signal_holder(path, 0)


def test_in_place_a_pid_file_a_serving_gateway_holds_is_refused(closed_dir: Path) -> None:
    path = closed_dir / "gateway.pid"
    with open(path) as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(PidFileError, match=r"a gateway still serving holds it \(pid 4242;"):
            with hold_pid_file(path):
                pass
    assert path.read_text() == "4242\n"


def test_no_file_in_a_directory_the_gateway_cannot_write_is_an_error_saying_so(
    closed_dir: Path,
) -> None:
    with pytest.raises(PidFileError, match="its directory refuses a new file"):
        with hold_pid_file(closed_dir / "other.pid"):
            pass
