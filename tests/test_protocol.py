"""Sans-IO tests of the native protocol: decoder, parser, renderer, text rules. No sockets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geventchat.core import events as ev
from geventchat.core.errors import ChatError
from geventchat.core.text import check_name, clean, name_key
from geventchat.wire.native import NATIVE, TOO_LONG, Command, LineDecoder, parse


def feed_whole(data: bytes, limit: int = 4096) -> list:
    d = LineDecoder(limit)
    return d.feed(data) + d.close()


def feed_bytewise(data: bytes, limit: int = 4096) -> list:
    d = LineDecoder(limit)
    out: list = []
    for i in range(len(data)):
        out += d.feed(data[i : i + 1])
    return out + d.close()


def feed_chunks(data: bytes, size: int, limit: int = 4096) -> list:
    d = LineDecoder(limit)
    out: list = []
    for i in range(0, len(data), size):
        out += d.feed(data[i : i + size])
    return out + d.close()


FEEDERS = [feed_whole, feed_bytewise, lambda d, limit=4096: feed_chunks(d, 3, limit)]


@pytest.mark.parametrize("feed", FEEDERS)
class TestDecoder:
    def test_lines_lf_and_crlf(self, feed):
        assert feed(b"alice\nhello\r\nworld\n") == ["alice", "hello", "world"]

    def test_final_line_without_newline(self, feed):
        assert feed(b"one\ntwo") == ["one", "two"]

    def test_empty_lines_kept_as_empty(self, feed):
        assert feed(b"\n\r\nx\n") == ["", "", "x"]

    def test_invalid_utf8_becomes_replacement(self, feed):
        assert feed(b"caf\xc3\xa9 \xff\xfe ok\n") == ["café \ufffd\ufffd ok"]

    def test_split_multibyte_char(self, feed):
        assert feed("żółw\n".encode()) == ["żółw"]

    def test_too_long_reported_once_and_next_line_survives(self, feed):
        data = b"x" * 50 + b"\nnext\n"
        assert feed(data, limit=10) == [TOO_LONG, "next"]

    def test_exact_limit_is_accepted_with_crlf(self, feed):
        assert feed(b"y" * 10 + b"\r\n", limit=10) == ["y" * 10]

    def test_too_long_final_chunk_without_newline(self, feed):
        assert feed(b"ok\n" + b"z" * 40, limit=10) == ["ok", TOO_LONG]

    def test_trailing_garbage_after_lines(self, feed):
        assert feed(b"a\nb\n\x00\x01garbage") == ["a", "b", "\x00\x01garbage"]


def test_decoder_memory_stays_bounded():
    d = LineDecoder(100)
    for _ in range(1000):
        d.feed(b"q" * 1000)
        assert len(d._buf) <= 101
    assert d.feed(b"\nafter\n") == ["after"]


@given(st.lists(st.binary(max_size=300), max_size=30))
def test_decoder_never_raises_and_respects_limit(chunks):
    d = LineDecoder(64)
    out = []
    for chunk in chunks:
        out += d.feed(chunk)
    out += d.close()
    for item in out:
        assert item is TOO_LONG or (isinstance(item, str) and len(item.encode()) <= 64 * 3)
        if isinstance(item, str):
            assert "\n" not in item


_LINE_CHARS = st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",))


@given(st.lists(st.text(alphabet=_LINE_CHARS, max_size=20), max_size=10), st.integers(1, 7))
def test_decoder_chunking_does_not_matter(lines, size):
    data = "".join(f"{line}\n" for line in lines).encode()
    assert feed_chunks(data, size) == feed_whole(data) == lines


class TestParse:
    def test_chat(self):
        assert parse("hello there") == Command("say", "hello there")

    def test_blank_is_ignored(self):
        assert parse("   ") is None
        assert parse("\x1b\x07") is None

    def test_command_word_is_case_insensitive(self):
        assert parse("/MSG bob hi there") == Command("msg", "bob hi there")

    def test_double_slash_escapes(self):
        assert parse("//shrug") == Command("say", "/shrug")

    def test_bare_exit_and_clear(self):
        assert parse("exit") == Command("quit")
        assert parse("clear") == Command("clear")
        assert parse(" exit ") == Command("quit")
        assert parse("exit now") == Command("say", "exit now")

    def test_lone_slash_is_a_command_not_chat(self):
        assert parse("/").name == ""
        assert parse("/ secret").name == ""

    def test_control_sequences_removed(self):
        assert parse("hi \x1b[2J\x1b]0;pwned\x07 there") == Command("say", "hi [2J]0;pwned there")


class TestText:
    def test_clean_strips_c0_c1_del_and_bidi(self):
        assert clean("a\x1bb\x7fc\x85d\u202ee\u2066f") == "abcdef"

    def test_clean_tab_to_space_keeps_emoji_zwj(self):
        assert clean("a\tb \U0001F468\u200d\U0001F469") == "a b \U0001F468\u200d\U0001F469"

    @pytest.mark.parametrize("name", ["alice", "Ålice", "名前", "bob.smith", "x-y_z", "a" * 32,
                                      "Ωμέγα", "user42"])
    def test_valid_names(self, name):
        assert check_name(name) == name

    @pytest.mark.parametrize("name", ["", "a b", "a" * 33, "al:ce", "*bob", "!x", "(p)", "a\u200bb",
                                      "a\u202eb", "bob\x1b", "who?"])
    def test_invalid_names(self, name):
        with pytest.raises(ChatError) as info:
            check_name(name)
        assert info.value.code == "invalid_name"

    def test_nfkc_folds_lookalikes(self):
        assert check_name("ａｌｉｃｅ") == "alice"
        assert name_key("ALICE") == name_key("alice") == name_key("ａｌｉｃｅ")


class TestRender:
    @pytest.mark.parametrize(("event", "line"), [
        (ev.Message("alice", "hi"), "alice: hi"),
        (ev.Action("alice", "waves"), "* alice waves"),
        (ev.PrivateMessage("alice", "bob", "psst"), "(private) alice -> bob: psst"),
        (ev.Joined("alice"), "* alice joined"),
        (ev.Left("alice"), "* alice left"),
        (ev.Left("alice", "bye all"), "* alice left (bye all)"),
        (ev.Kicked("bob", "root"), "* bob was kicked by root"),
        (ev.Kicked("bob", "root", "spam"), "* bob was kicked by root: spam"),
        (ev.Renamed("alice", "al"), "* alice is now known as al"),
        (ev.Cleared("root"), "* history cleared by root"),
        (ev.Shutdown("maintenance"), "* server shutting down: maintenance"),
        (ev.Notice("online (1): alice"), "* online (1): alice"),
        (ev.Prompt("name"), "? name:"),
        (ev.Prompt("password"), "? password:"),
        (ev.Error("usage", "usage: /msg NAME text"), "! usage: /msg NAME text"),
    ])
    def test_each_event(self, event, line):
        assert NATIVE.render(event) == (line + "\n").encode()

    def test_render_many_is_one_buffer_in_order(self):
        batch = [ev.Message("a", "1"), ev.Joined("b"), ev.Message("b", "ü")]
        assert NATIVE.render_many(batch) == "a: 1\n* b joined\nb: ü\n".encode()
