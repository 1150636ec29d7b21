"""``geventchat serve`` start-up as an operator meets it: real processes, config files,
environment variables, and one-line refusals (exit 2) that name the key, flag or file."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from tests.conftest import START_TIMEOUT, STOP_TIMEOUT, child_env, geventchat_argv
from tests.helpers import LineClient

_LISTENING = re.compile(r"listening on (\S+):(\d+)")


def run_serve(tmp_path: Path, *args: str, env: Mapping[str, str | None] | None = None,
              files: bool = True) -> subprocess.CompletedProcess[str]:
    """``geventchat serve ARGS`` expected to exit by itself (an error or --print-config)."""
    base = ["--history", str(tmp_path / "history.txt"),
            "--admins", str(tmp_path / "admins.json")] if files else []
    return subprocess.run(
        geventchat_argv("serve", "--host", "127.0.0.1", "--port", "0", *base, *args)
        if files else geventchat_argv("serve", *args),
        capture_output=True, text=True, env=child_env(env), cwd=tmp_path,
        stdin=subprocess.DEVNULL, timeout=START_TIMEOUT)


def refused(done: subprocess.CompletedProcess[str]) -> str:
    """The one-line error of a refused start (exit 2, no traceback)."""
    assert done.returncode == 2, f"exit {done.returncode}:\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    lines = [x for x in done.stderr.splitlines() if x.startswith("geventchat")]
    assert lines, done.stderr
    assert "listening on" not in done.stderr
    return lines[-1]


def start_serve(tmp_path: Path, argv: Sequence[str],
                env: Mapping[str, str | None] | None = None) -> tuple[str, int, list[str]]:
    """Start ``geventchat serve ARGV``, wait for ``listening on``, stop it with SIGTERM;
    the host and port it listened on, and its log."""
    proc = subprocess.Popen(geventchat_argv("serve", *argv), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=child_env(env), cwd=tmp_path)
    log: list[str] = []
    found: list[tuple[str, int]] = []
    ready = threading.Event()

    def drain() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            log.append(line)
            m = _LISTENING.search(line)
            if m and not ready.is_set():
                found.append((m.group(1), int(m.group(2))))
                ready.set()
        ready.set()  # EOF: it exited

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    try:
        if ready.wait(START_TIMEOUT) and found:
            # Really serving (and past installing its SIGTERM handler, which happens just
            # after the "listening on" line): the greeting comes.
            client = LineClient(found[0][1], host=found[0][0])
            try:
                assert client.line() == "? name:"
            finally:
                client.close()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            status = proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            status = proc.wait(STOP_TIMEOUT)
        thread.join(STOP_TIMEOUT)
    assert found, f"never listened (exit {status}):\n{''.join(log)}"
    assert status == 0, "".join(log)
    return found[0][0], found[0][1], log


# -- argument ranges -----------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["--port", "70000"], "argument --port: must be 0 to 65535, got 70000"),
    (["--irc-port", "65536"], "argument --irc-port: must be 0 to 65535, got 65536"),
    (["--rate-limit", "-1"], "argument --rate-limit: must be 0 or more, got -1"),
    (["--rate-limit", "nan"], "argument --rate-limit: must be 0 or more, got nan"),
    (["--idle-timeout", "-5"], "argument --idle-timeout: must be 0 or more, got -5"),
    (["--register-timeout", "0"], "argument --register-timeout: must be more than 0, got 0"),
    (["--history-max", "-1"], "argument --history-max: must be at least 0, got -1"),
])
def test_out_of_range_values_refused(tmp_path: Path, args: list[str], message: str) -> None:
    assert message in refused(run_serve(tmp_path, *args))


# -- files checked at start ----------------------------------------------------------------


@pytest.mark.parametrize("flag, what", [
    ("--password-file", "password file"), ("--motd", "motd file"),
])
def test_missing_file_is_named(tmp_path: Path, flag: str, what: str) -> None:
    missing = tmp_path / "missing.txt"
    line = refused(run_serve(tmp_path, flag, str(missing)))
    assert line == f"geventchat: {what} {missing}: No such file or directory"


def test_missing_tls_files_are_named(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    line = refused(run_serve(tmp_path, "--tls-cert", str(cert), "--tls-key", str(key)))
    assert line == f"geventchat: TLS certificate {cert}: No such file or directory"
    cert.write_text("not a certificate")
    line = refused(run_serve(tmp_path, "--tls-cert", str(cert), "--tls-key", str(key)))
    assert line == f"geventchat: TLS key {key}: No such file or directory"
    line = refused(run_serve(tmp_path, "--tls-cert", str(cert)))
    assert line == "geventchat: --tls-cert and --tls-key go together"


def test_admins_file_absent_is_fine_but_present_must_be_readable(tmp_path: Path) -> None:
    admins = tmp_path / "admins.json"
    start_serve(tmp_path, ["--host", "127.0.0.1", "--port", "0", "--admins", str(admins),
                           "--history", str(tmp_path / "h.txt")])
    admins.mkdir()
    line = refused(run_serve(tmp_path))
    assert line == f"geventchat: admins file {admins} is a directory, not a file"


def test_unwritable_history_is_named(tmp_path: Path) -> None:
    missing_dir = tmp_path / "state" / "history.txt"
    line = refused(run_serve(tmp_path, "--history", str(missing_dir)))
    assert line == (f"geventchat: history file {missing_dir}: directory {missing_dir.parent} "
                    "does not exist")
    a_dir = tmp_path / "hist"
    a_dir.mkdir()
    line = refused(run_serve(tmp_path, "--history", str(a_dir)))
    assert line == f"geventchat: history file {a_dir} is a directory, not a file"


def test_history_in_read_only_directory(tmp_path: Path, read_only_dir: Path) -> None:
    ro = read_only_dir
    line = refused(run_serve(tmp_path, "--history", str(ro / "h.txt")))
    assert line.startswith(f"geventchat: history file {ro / 'h.txt'} is not writable")


# -- defaults ------------------------------------------------------------------------------


def test_default_host_is_all_interfaces_and_history_max_50000(tmp_path: Path) -> None:
    done = run_serve(tmp_path, "--print-config", files=False,
                     env={k: None for k in os.environ if k.startswith("GEVENTCHAT_")})
    assert done.returncode == 0, done.stderr
    data = tomllib.loads(done.stdout)
    assert data["host"] == "0.0.0.0"
    assert data["port"] == 9999
    assert data["history_max"] == 50000
    assert data["history"] == "history.txt"


def test_history_max_zero_means_unlimited(tmp_path: Path) -> None:
    start_serve(tmp_path, ["--host", "127.0.0.1", "--port", "0", "--history-max", "0",
                           "--history", str(tmp_path / "h.txt")])


# -- config file and environment -----------------------------------------------------------


def test_config_file_env_and_flag_precedence(tmp_path: Path) -> None:
    """Which of three loopback addresses it listens on shows who won."""
    conf = tmp_path / "geventchat.toml"
    conf.write_text(f'host = "127.0.0.2"\nport = 0\nhistory = "{tmp_path / "h.txt"}"\n'
                    f'admins = "{tmp_path / "a.json"}"\nmax_clients = 50\n')
    host, _, _ = start_serve(tmp_path, ["--config", str(conf)])
    assert host == "127.0.0.2"
    host, _, _ = start_serve(tmp_path, ["--config", str(conf)],
                             env={"GEVENTCHAT_HOST": "127.0.0.3"})
    assert host == "127.0.0.3"
    host, _, _ = start_serve(tmp_path, ["--config", str(conf), "--host", "127.0.0.4"],
                             env={"GEVENTCHAT_HOST": "127.0.0.3"})
    assert host == "127.0.0.4"
    host, _, _ = start_serve(tmp_path, [], env={"GEVENTCHAT_CONFIG": str(conf)})
    assert host == "127.0.0.2"


def test_config_file_unknown_key_refused(tmp_path: Path) -> None:
    conf = tmp_path / "geventchat.toml"
    conf.write_text("max_clients = 5000\nmax_client = 5\n")
    line = refused(run_serve(tmp_path, "--config", str(conf)))
    assert line == f"geventchat: config file {conf}: unknown key 'max_client'"


def test_config_file_wrong_type_refused(tmp_path: Path) -> None:
    conf = tmp_path / "geventchat.toml"
    conf.write_text('max_clients = "5000"\n')
    line = refused(run_serve(tmp_path, "--config", str(conf)))
    assert line == (f"geventchat: config file {conf}: max_clients: expected an integer, "
                    "got str '5000'")


def test_env_value_refused(tmp_path: Path) -> None:
    line = refused(run_serve(tmp_path, env={"GEVENTCHAT_RATE_LIMIT": "-1"}))
    assert line == "geventchat: environment variable GEVENTCHAT_RATE_LIMIT: must be 0 or " \
                   "more, got -1"


def test_print_config(tmp_path: Path) -> None:
    conf = tmp_path / "geventchat.toml"
    conf.write_text("max_clients = 5000\nirc_port = 6667\n")
    done = run_serve(tmp_path, "--config", str(conf), "--print-config",
                     env={"GEVENTCHAT_PORT": "9000"}, files=False)
    assert done.returncode == 0, done.stderr
    data = tomllib.loads(done.stdout)
    assert (data["max_clients"], data["irc_port"], data["port"]) == (5000, 6667, 9000)
    assert re.search(r"^port = 9000  # env GEVENTCHAT_PORT$", done.stdout, re.M)
    assert re.search(rf"^max_clients = 5000  # file {re.escape(str(conf))}$", done.stdout, re.M)
    # Nothing was started or created.
    assert not (tmp_path / "history.txt").exists()


def test_contrib_example_config_is_valid(tmp_path: Path) -> None:
    example = Path(__file__).parent.parent / "contrib" / "geventchat.toml"
    done = run_serve(tmp_path, "--config", str(example), "--print-config", files=False)
    assert done.returncode == 0, done.stderr
    data = tomllib.loads(done.stdout)
    assert data["history"] == "/var/lib/geventchat/history.txt"


# -- admin add -----------------------------------------------------------------------------


def test_admin_add_refuses_short_password(tmp_path: Path) -> None:
    admins = tmp_path / "admins.json"
    done = subprocess.run(geventchat_argv("admin", "add", "root", "--admins", str(admins)),
                          input="short7!\n", capture_output=True, text=True,
                          env=child_env(), timeout=STOP_TIMEOUT)
    assert done.returncode == 2
    assert done.stderr.strip() == "geventchat: password too short: at least 8 characters"
    assert not admins.exists()
    done = subprocess.run(geventchat_argv("admin", "add", "root", "--admins", str(admins)),
                          input="eight8!!\n", capture_output=True, text=True,
                          env=child_env(), timeout=STOP_TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert admins.exists()


def test_systemd_unit_uses_the_config_file() -> None:
    unit = (Path(__file__).parent.parent / "contrib" / "geventchat.service").read_text()
    exec_start = next(x for x in unit.splitlines() if x.startswith("ExecStart="))
    assert exec_start.endswith("serve --config /etc/geventchat/geventchat.toml")
    example = tomllib.loads((Path(__file__).parent.parent / "contrib" / "geventchat.toml")
                            .read_text())
    assert Path(example["history"]).parent.as_posix() in unit  # ReadWritePaths covers state
