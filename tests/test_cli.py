"""The `gateway` command, run as a real process."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from gateway.config import load_config

REPO = Path(__file__).resolve().parent.parent


def gateway(*args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_check_accepts_the_shipped_config() -> None:
    result = gateway("check", "--config", str(REPO / "gateway.toml"))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_check_rejects_with_dotted_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[backends.b]\ntype = "openai"\nurl = "http://x/v1"\n'
        '[routes.chat]\nbackend = "b"\n[routes.chat.keepalive]\ninterval = "soon"\n'
    )
    result = gateway("check", "--config", str(bad))
    assert result.returncode == 2
    assert "routes.chat.keepalive.interval" in result.stderr


def test_check_missing_env(tmp_path: Path) -> None:
    cfg = tmp_path / "env.toml"
    cfg.write_text(
        '[backends.b]\ntype = "openai"\nurl = "http://x/v1"\n'
        'api_key = { env = "TRIO_GATEWAY_TEST_UNSET" }\n[routes.chat]\nbackend = "b"\n'
    )
    result = gateway("check", "--config", str(cfg), env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert (
        "backends.b.api_key: environment variable TRIO_GATEWAY_TEST_UNSET is not set"
        in result.stderr
    )


def test_serve_rejects_bad_bind() -> None:
    result = gateway("serve", "--config", str(REPO / "gateway.toml"), "--bind", "nope")
    assert result.returncode == 2
    assert "--bind" in result.stderr


def test_plugins_lists_builtin_backends_with_distribution() -> None:
    result = gateway("plugins")
    assert result.returncode == 0, result.stderr
    line = next(row for row in result.stdout.splitlines() if row.startswith("openai "))
    assert "trio-gateway" in line
    assert "url: str (required)" in result.stdout


def teams_config(tmp_path: Path, database: Path) -> Path:
    cfg = tmp_path / "teams.toml"
    cfg.write_text(
        '[backends.b]\ntype = "openai"\nurl = "http://127.0.0.1:9/v1"\n'
        '[routes.chat]\nbackend = "b"\n'
        f'[teams.alpha]\nkeys = ["sha256:{"0" * 64}"]\n'
        f"[usage]\ndatabase = {str(database)!r}\n"
    )
    return cfg


def test_unusable_usage_database_is_one_line_naming_it(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    for database, why in [
        (tmp_path / "missing" / "u.sqlite", f"directory {tmp_path / 'missing'} does not exist"),
        (tmp_path, "it is a directory"),
        (tmp_path / "file" / "u.sqlite", f"{tmp_path / 'file'} is not a directory"),
    ]:
        cfg = teams_config(tmp_path, database)
        problem = f"usage.database {database}: cannot open it: {why}"
        checked = gateway("check", "--config", str(cfg))
        assert (checked.returncode, checked.stdout) == (1, "")
        assert checked.stderr.splitlines() == [f"{cfg}: {problem}"]
        served = gateway("serve", "--config", str(cfg), "--bind", "127.0.0.1:0")
        assert served.returncode == 1
        assert served.stderr.splitlines() == [f"cannot start: {problem}"]


def test_check_leaves_a_usable_usage_database_alone(tmp_path: Path) -> None:
    database = tmp_path / "usage.sqlite"
    result = gateway("check", "--config", str(teams_config(tmp_path, database)))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout
    assert not database.exists()


def test_unusable_responses_database_is_one_line_naming_it(tmp_path: Path) -> None:
    database = tmp_path / "missing" / "r.sqlite"
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(
        '[backends.b]\ntype = "openai"\nurl = "http://127.0.0.1:9/v1"\n'
        '[routes.chat]\nbackend = "b"\n'
        f"[responses]\ndatabase = {str(database)!r}\n"
    )
    problem = (
        f"responses.database {database}: cannot open it: "
        f"directory {tmp_path / 'missing'} does not exist"
    )
    checked = gateway("check", "--config", str(cfg))
    assert (checked.returncode, checked.stderr.splitlines()) == (1, [f"{cfg}: {problem}"])
    served = gateway("serve", "--config", str(cfg), "--bind", "127.0.0.1:0")
    assert (served.returncode, served.stderr.splitlines()) == (1, [f"cannot start: {problem}"])


def closed_port() -> int:
    """A port nothing listens on: bound, then closed."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def served_config(tmp_path: Path, *, workers: int = 1, pid_file: Path | None = None) -> Path:
    cfg = tmp_path / f"served-{workers}.toml"
    pid = pid_file if pid_file is not None else tmp_path / "gateway.pid"
    cfg.write_text(
        f'[server]\nbind = "127.0.0.1:0"\nworkers = {workers}\npid_file = {str(pid)!r}\n'
        '[backends.b]\ntype = "openai"\nurl = "http://127.0.0.1:9/v1"\n'
        '[routes.chat]\nbackend = "b"\n'
        f"[responses]\ndatabase = {str(tmp_path / 'responses.sqlite')!r}\n"
    )
    return cfg


def test_serve_on_a_port_in_use_is_one_line_naming_the_address(tmp_path: Path) -> None:
    """Single process and workers = 2 alike: no traceback, the address, exit status 1."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        for workers in (1, 2):
            served = gateway(
                "serve",
                "--config",
                str(served_config(tmp_path, workers=workers)),
                "--bind",
                address,
            )
            assert served.returncode == 1, served.stderr
            assert "Traceback" not in served.stderr
            assert served.stderr.splitlines()[-1] == (
                f"cannot start: cannot listen on {address}: Address already in use"
            )


def test_serve_with_a_pid_file_in_a_missing_directory_is_one_line_naming_it(
    tmp_path: Path,
) -> None:
    pid_file = tmp_path / "missing" / "gateway.pid"
    for workers in (1, 2):
        cfg = served_config(tmp_path, workers=workers, pid_file=pid_file)
        served = gateway("serve", "--config", str(cfg))
        assert served.returncode == 1, served.stderr
        assert "Traceback" not in served.stderr
        assert served.stderr.splitlines()[-1] == (
            f"cannot start: pid file {pid_file}: cannot write it: No such file or directory"
        )
        assert list((tmp_path).glob(".gateway.pid*")) == []


def test_usage_with_redis_unreachable_is_one_line(tmp_path: Path) -> None:
    port = closed_port()
    cfg = tmp_path / "redis.toml"
    cfg.write_text(
        '[backends.b]\ntype = "openai"\nurl = "http://127.0.0.1:9/v1"\n'
        '[routes.chat]\nbackend = "b"\n'
        f'[state]\nredis = "redis://127.0.0.1:{port}/0"\n'
    )
    result = gateway("usage", "--config", str(cfg))
    assert (result.returncode, result.stdout) == (1, ""), result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"cannot read usage from redis: redis at 127.0.0.1:{port}: ")


def test_keys_new_refuses_a_name_no_team_may_have() -> None:
    for name in ["my team", "", "a" * 65, "é"]:
        result = gateway("keys", "new", "--team", name)
        assert (result.returncode, result.stdout) == (2, ""), name
        assert "a team name is 1-64 of A-Z a-z 0-9 _ . -" in result.stderr


def test_keys_new_prints_a_table_the_config_reads_for_a_dotted_name(tmp_path: Path) -> None:
    result = gateway("keys", "new", "--team", "ops.eu")
    assert result.returncode == 0, result.stderr
    _, header_line, keys_line = result.stdout.splitlines()
    header = header_line.split("[", 1)[1].split("]", 1)[0]
    assert header == 'teams."ops.eu"'
    cfg = teams_config(tmp_path, tmp_path / "usage.sqlite")
    cfg.write_text(cfg.read_text() + f"[{header}]\n{keys_line}\n")
    assert load_config(cfg).teams["ops.eu"].keys == (keys_line.split('"')[1],)
