"""Admin accounts: hashing, file format and permissions, and a loop that never stalls."""

from __future__ import annotations

import json
import os

import gevent
import pytest

from geventchat.store import admins as auth
from geventchat.store.admins import AdminFileError, AdminStore, key

PASSWORD = "correct horse battery staple"


@pytest.fixture
def path(tmp_path):
    return tmp_path / "admins.json"


@pytest.fixture
def store(path):
    s = AdminStore(path)
    s.add("Alice", PASSWORD)
    return s


def admins_json(path) -> dict:
    return json.loads(path.read_text())["admins"]


def test_key_is_nfkc_casefold():
    assert key("Alice") == key("ALICE") == "alice"
    assert key("Straße") == key("STRASSE")
    assert key("ｂｏｂ") == "bob"  # fullwidth letters are NFKC-equal to ASCII


def test_add_then_verify_right_and_wrong(store):
    assert store.verify("Alice", PASSWORD)
    assert not store.verify("Alice", PASSWORD + "x")
    assert not store.verify("Alice", "")


def test_name_is_case_insensitive(store):
    assert store.is_admin("alice") and store.is_admin("ALICE") and store.is_admin("Ａｌｉｃｅ")
    assert store.verify("aLiCe", PASSWORD)
    store.add("ALICE", "new password")  # same account: replaces it
    assert store.names() == ["ALICE"]
    assert not store.verify("alice", PASSWORD) and store.verify("alice", "new password")


def test_unknown_name_verifies_false(store):
    assert not store.is_admin("bob")
    assert not store.verify("bob", PASSWORD)


def test_changes_persist(path, store):
    store.add("bob", "pw2")
    again = AdminStore(path)
    assert again.names() == ["Alice", "bob"]
    assert again.verify("ALICE", PASSWORD) and again.verify("Bob", "pw2")


def test_hash_is_salted(path, store):
    store.add("bob", PASSWORD)
    entries = admins_json(path)
    assert entries["alice"]["hash"] != entries["bob"]["hash"]
    first = entries["alice"]["hash"]
    store.add("alice", PASSWORD)
    assert admins_json(path)["alice"]["hash"] != first


def test_file_format(path, store):
    data = json.loads(path.read_text())
    assert data["version"] == 1
    entry = data["admins"]["alice"]
    assert entry["name"] == "Alice"
    scheme, n, r, p, salt, digest = entry["hash"].split("$")
    assert (scheme, n, r, p) == ("scrypt", str(2**14), "8", "1")
    assert len(auth.base64.b64decode(salt)) == 16 and len(auth.base64.b64decode(digest)) == 32


def test_file_mode_0600_and_no_plaintext(path, store):
    assert path.stat().st_mode & 0o777 == 0o600
    raw = path.read_bytes()
    assert PASSWORD.encode() not in raw and b"horse" not in raw
    assert sorted(os.listdir(path.parent)) == ["admins.json"]  # no temp file left


def test_umask_does_not_change_mode(path):
    old = os.umask(0o077)
    try:
        AdminStore(path).add("alice", PASSWORD)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o600


def test_remove(path, store):
    store.add("bob", "pw2")
    assert store.remove("ALICE")
    assert not store.remove("alice")
    assert not store.is_admin("alice") and not store.verify("alice", PASSWORD)
    assert AdminStore(path).names() == ["bob"]


def test_names_sorted_ignoring_case(store):
    store.add("bob", "x")
    store.add("Carol", "x")
    store.add("aaron", "x")
    assert store.names() == ["aaron", "Alice", "bob", "Carol"]


def test_empty_password_rejected(store):
    with pytest.raises(ValueError):
        store.add("bob", "")
    assert not store.is_admin("bob")


def test_missing_file_means_no_admins(path):
    s = AdminStore(path)
    assert s.names() == [] and not s.is_admin("alice") and not s.verify("alice", "x")
    assert not path.exists()


def test_no_path_means_no_admins():
    s = AdminStore(None)
    assert s.names() == [] and not s.verify("alice", "x")
    s.reload()
    with pytest.raises(AdminFileError):
        s.add("alice", "x")


def test_refuses_file_readable_by_others(path, store):
    path.chmod(0o644)
    with pytest.raises(AdminFileError) as info:
        AdminStore(path)
    message = str(info.value)
    assert "\n" not in message
    assert message == (f"admins file {path} is readable by others (mode 0644); "
                       f"run: chmod 600 {path}")
    path.chmod(0o620)
    with pytest.raises(AdminFileError, match="mode 0620"):
        AdminStore(path)


@pytest.mark.parametrize("content, reason", [
    ("not json", "malformed"),
    ("[]", "version"),
    ('{"admins": {}}', "version"),
    ('{"version": 2, "admins": {}}', "version"),
    ('{"version": true, "admins": {}}', "version"),
    ('{"version": 1}', "admins"),
    ('{"version": 1, "admins": {"bob": "x"}}', "bob"),
    ('{"version": 1, "admins": {"bob": {"name": "bob"}}}', "hash"),
    ('{"version": 1, "admins": {"bob": {"name": "bob", "hash": "md5$abc"}}}', "scrypt"),
    ('{"version": 1, "admins": {"bob": {"name": "bob", "hash": "scrypt$x$8$1$AA==$AA=="}}}',
     "numeric"),
    ('{"version": 1, "admins": {"bob": {"name": "bob", "hash": "scrypt$1000$8$1$AA==$AA=="}}}',
     "range"),
    ('{"version": 1, "admins": {"bob": {"name": "bob", "hash": "scrypt$16384$8$1$!!$AA=="}}}',
     "base64"),
    ('{"version": 1, "admins": {"Bob": {"name": "bob", "hash": "scrypt$16$8$1$AA==$AA=="}}}',
     "key must be"),
])
def test_malformed_file_error(path, content, reason):
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(AdminFileError, match=reason) as info:
        AdminStore(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_reload_sees_changes_and_keeps_state_on_error(path, store):
    AdminStore(path).add("bob", "pw2")
    assert not store.is_admin("bob")
    store.reload()
    assert store.is_admin("bob")
    path.chmod(0o644)
    with pytest.raises(AdminFileError):
        store.reload()
    assert store.names() == ["Alice", "bob"]


def test_save_error_keeps_memory_unchanged(tmp_path):
    s = AdminStore(tmp_path / "missing-dir" / "admins.json")
    with pytest.raises(AdminFileError, match="cannot write"):
        s.add("alice", PASSWORD)
    assert not s.is_admin("alice")


def test_verify_does_not_stall_the_loop(store):
    ticks = 0

    def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            gevent.sleep(0.001)

    g = gevent.spawn(ticker)
    try:
        with gevent.Timeout(5):
            gevent.sleep(0)  # let the ticker start
            before = ticks
            assert store.verify("alice", PASSWORD)  # ~50 ms of scrypt in a thread
            during_known = ticks - before
            before = ticks
            assert not store.verify("nobody", PASSWORD)  # the dummy hash, also threaded
            during_unknown = ticks - before
    finally:
        g.kill()
    assert during_known > 0 and during_unknown > 0


def test_unknown_name_costs_a_hash(store, monkeypatch):
    calls = []
    real = auth.hashlib.scrypt

    def counting(*args, **kwargs):
        calls.append(kwargs["n"])
        return real(*args, **kwargs)

    monkeypatch.setattr(auth.hashlib, "scrypt", counting)
    store.verify("nobody", PASSWORD)
    store.verify("alice", PASSWORD)
    assert calls == [2**14, 2**14]


def test_password_never_logged(path, caplog):
    with caplog.at_level("DEBUG"):
        s = AdminStore(path)
        s.add("alice", PASSWORD)
        s.verify("alice", PASSWORD)
        s.verify("alice", "wrong guess")
        s.remove("alice")
    assert "horse" not in caplog.text and "wrong guess" not in caplog.text
