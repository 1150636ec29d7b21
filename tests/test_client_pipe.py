"""Pipe mode (stdin not a terminal): piped lines are chat, never names or passwords.

Passwords come from ``--password-file`` / ``--admin-password-file`` or the
``GEVENTCHAT_SERVER_PASSWORD`` / ``GEVENTCHAT_ADMIN_PASSWORD`` variables; a refused name
exits 4 and a missing or wrong password exits 5, before any piped line is sent. Every
client here is a real process on pipes against a real server; the server's history file
shows what was said.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from geventchat.client import EXIT_NAME, EXIT_OK, EXIT_PASSWORD

if TYPE_CHECKING:
    from tests.conftest import Server, ServerFactory

    PipeClient = Callable[..., subprocess.CompletedProcess[str]]
    PipeProcess = Callable[..., subprocess.Popen[str]]
Uid = Callable[[str], str]


def _said(srv: Server, token: str, pipe_client: PipeClient, uid: Uid, **kw: object) -> bool:
    """Whether ``token`` reached the room: a later client's history replay tells."""
    done = pipe_client(uid("check"), input="", **kw)
    assert done.returncode == EXIT_OK, done.stderr
    return token in done.stdout


def test_refused_name_exits_4_and_no_piped_line_becomes_a_name(
    server: ServerFactory, pipe_client: PipeClient, pipe_process: PipeProcess, uid: Uid
) -> None:
    srv = server()
    taken = uid("alice")
    holder = pipe_process(taken)  # holds the name while the second client tries it
    assert holder.stdout is not None
    for line in holder.stdout:
        if line.strip() == f"* {taken} joined":
            break
    first, second = uid("first"), uid("second")
    done = pipe_client(taken.upper(), input=f"{first}\n{second}\n")
    assert done.returncode == EXIT_NAME, (done.stdout, done.stderr)
    assert "! name taken" in done.stdout
    assert done.stderr.strip() == (
        f"geventchat: name refused: {taken.upper()} (! name taken: {taken.upper()})"
    )
    assert "joined" not in done.stdout
    assert not _said(srv, first, pipe_client, uid)
    assert not _said(srv, second, pipe_client, uid)


def test_invalid_name_exits_4(server: ServerFactory, pipe_client: PipeClient, uid: Uid) -> None:
    server()
    token = uid("tok")
    done = pipe_client("no spaces allowed", input=f"{token}\n")
    assert done.returncode == EXIT_NAME
    assert "invalid name" in done.stderr and token not in done.stdout
    # Without --name, no stdin line is ever taken for a name: piped lines are only chat.
    done = pipe_client(input=f"alice\n{token}\n")
    assert done.returncode == EXIT_NAME
    assert "--name" in done.stderr and "alice" not in done.stdout and token not in done.stdout


def test_admin_name_without_password_exits_5_and_sends_no_chat_as_password(
    server: ServerFactory, pipe_client: PipeClient, uid: Uid
) -> None:
    admin, password = uid("root"), uid("pw")
    srv = server(admins={admin: password})
    chat = uid("chat")
    done = pipe_client(admin, input=f"{chat}\n", env={"GEVENTCHAT_ADMIN_PASSWORD": None})
    assert done.returncode == EXIT_PASSWORD, (done.stdout, done.stderr)
    assert "? password:" in done.stdout
    assert "GEVENTCHAT_ADMIN_PASSWORD" in done.stderr and "--admin-password-file" in done.stderr
    assert "wrong password" not in done.stdout  # nothing was sent as a password
    assert not any(chat in line for line in srv.log)
    assert not _said(srv, chat, pipe_client, uid)


def test_admin_password_from_the_environment_or_a_file(
    server: ServerFactory, pipe_client: PipeClient, uid: Uid, tmp_path: Path
) -> None:
    admin, password = uid("root"), uid("pw")
    srv = server(admins={admin: password})
    pw_file = tmp_path / "admin-pw"
    pw_file.write_text(password + "\n")
    for how in ({"env": {"GEVENTCHAT_ADMIN_PASSWORD": password}},
                {"args": ["--admin-password-file", str(pw_file)]}):
        chat = uid("chat")
        done = pipe_client(admin, input=f"{chat}\n/clear\n", **how)
        assert done.returncode == EXIT_OK, (how, done.stdout, done.stderr)
        assert f"* {admin} joined" in done.stdout.splitlines()
        assert f"{admin}: {chat}" in done.stdout.splitlines()  # the first line is chat
        assert f"* history cleared by {admin}" in done.stdout.splitlines()  # admin indeed
        assert password not in done.stdout + done.stderr
    assert not any(password in line for line in srv.log)


def test_wrong_admin_password_exits_5_at_once(
    server: ServerFactory, pipe_client: PipeClient, uid: Uid
) -> None:
    admin, password = uid("root"), uid("pw")
    server(admins={admin: password})
    chat, wrong = uid("chat"), uid("wrong")
    done = pipe_client(admin, input=f"{chat}\n", env={"GEVENTCHAT_ADMIN_PASSWORD": wrong})
    assert done.returncode == EXIT_PASSWORD
    assert done.stderr.strip() == f"geventchat: wrong password for {admin} (! wrong password)"
    assert done.stdout.count("? password:") == 1  # not tried again with a chat line
    assert wrong not in done.stdout + done.stderr and chat not in done.stdout


def test_server_password_from_a_file_or_the_environment_or_exit_5(
    server: ServerFactory, pipe_client: PipeClient, uid: Uid, tmp_path: Path
) -> None:
    password = uid("serverpw")
    server_file = tmp_path / "server-password"
    server_file.write_text(password + "\n")
    srv = server(args=["--password-file", str(server_file)])
    client_file = tmp_path / "client-password"
    client_file.write_text(password + "\r\nsecond line ignored\n")

    for how in ({"args": ["--password-file", str(client_file)]},
                {"env": {"GEVENTCHAT_SERVER_PASSWORD": password}}):
        name, chat = uid("alice"), uid("chat")
        done = pipe_client(name, input=f"{chat}\n", **how)
        assert done.returncode == EXIT_OK, (how, done.stdout, done.stderr)
        assert f"{name}: {chat}" in done.stdout.splitlines()
        assert password not in done.stdout + done.stderr

    chat = uid("chat")  # no password given: the chat line must not be tried as one
    done = pipe_client(uid("bob"), input=f"{chat}\n", env={"GEVENTCHAT_SERVER_PASSWORD": None})
    assert done.returncode == EXIT_PASSWORD
    assert "--password-file" in done.stderr and "GEVENTCHAT_SERVER_PASSWORD" in done.stderr
    assert "wrong server password" not in done.stdout

    wrong = uid("wrong")
    done = pipe_client(uid("bob"), input=f"{chat}\n", env={"GEVENTCHAT_SERVER_PASSWORD": wrong})
    assert done.returncode == EXIT_PASSWORD
    assert done.stderr.strip() == "geventchat: wrong server password (! wrong server password)"
    assert done.stdout.count("? server password:") == 2  # asked again, and we gave up
    assert not _said(srv, chat, pipe_client, uid,
                     env={"GEVENTCHAT_SERVER_PASSWORD": password})


def test_unreadable_password_file_exits_5(
    server: ServerFactory, pipe_client: PipeClient, tmp_path: Path
) -> None:
    server()
    done = pipe_client("alice", input="hi\n",
                       args=["--password-file", str(tmp_path / "missing")])
    assert done.returncode == EXIT_PASSWORD
    assert done.stderr.startswith("geventchat: cannot read the password file"), done.stderr
