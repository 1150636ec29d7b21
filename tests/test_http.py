"""The HTTP and WebSocket edge against real server processes, over raw sockets.

Routes, bad requests, limits, the origin check, WebSocket framing (fragments, oversized
and binary messages, unmasked frames, pings, the close handshake), chat between a
WebSocket user and a native user, /healthz during a shutdown, /metrics against known
traffic, slowloris, and https/wss.
"""

from __future__ import annotations

import re
import signal
import socket
import ssl
import struct

import pytest

from tests.helpers import wait_for
from tests.ws import BINARY, CLOSE, CONT, PING, PONG, TEXT, Conn, WsClient, frame, get


def _port(srv, kind: str) -> int:
    line = srv.wait_log(rf"{kind} listening on")
    return int(re.search(r":(\d+)", line.split("listening on")[1]).group(1))


# --- routes ----------------------------------------------------------------------------------


def test_page_etag_and_security_headers(make_srv):
    srv = make_srv()
    r = get(srv.port, "/")
    assert r.status == 200
    assert r.headers["content-type"].startswith("text/html")
    assert b"<title>geventchat</title>" in r.body
    etag = r.headers["etag"]
    csp = r.headers["content-security-policy"]
    assert "script-src 'sha256-" in csp and "unsafe-inline" not in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    again = get(srv.port, "/", headers={"If-None-Match": etag})
    assert again.status == 304 and again.body == b""
    head = get(srv.port, "/", method="HEAD")
    assert head.status == 200 and head.headers["etag"] == etag


def test_not_found_keepalive_and_method(make_srv):
    srv = make_srv()
    c = Conn(srv.port)
    assert c.request("/nope").status == 404
    assert c.request("/healthz").status == 200  # same connection: keep-alive works
    r = c.request("/", method="POST", headers={"Content-Length": "0"})
    assert r.status == 405 and r.headers["allow"] == "GET, HEAD"
    assert c.closed()


def test_ws_endpoint_without_upgrade_is_426(make_srv):
    srv = make_srv()
    assert get(srv.port, "/ws").status == 426


@pytest.mark.parametrize("request_bytes", [
    b"GET / HTTP/1.1\r\n\r\n",  # no Host
    b"GET / HTTP/1.1\r\nHost: x\r\nbad header line\r\n\r\n",
    b"GET /\x01 HTTP/9\r\n\r\n",
])
def test_bad_requests_get_400_and_close(make_srv, request_bytes):
    srv = make_srv()
    c = Conn(srv.port)
    c.send(request_bytes)
    assert c.response().status == 400
    assert c.closed()


def test_oversized_head_is_431_and_closed(make_srv):
    srv = make_srv()
    c = Conn(srv.port)
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n")
    assert c.response().status == 431
    assert c.closed()


def test_slowloris_hits_the_register_timeout(make_srv):
    srv = make_srv("--register-timeout", "1")
    c = Conn(srv.port)
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n")  # ... and never the end of the head
    assert c.response(timeout=5).status == 408
    assert c.closed(5)


def test_http_port_serves_http_alone(make_srv):
    srv = make_srv("--http-port", "0")
    port = _port(srv, "HTTP")
    assert get(port, "/healthz").status == 200
    ws = WsClient(port)
    assert ws.status == 101
    ws.login("porty")


# --- health and metrics ----------------------------------------------------------------------


def test_healthz_503_during_shutdown(make_srv):
    srv = make_srv()
    r = get(srv.port, "/healthz")
    assert r.status == 200 and b'"status": "ok"' in r.body
    c = Conn(srv.port)
    c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # a request under way...
    wait_for(lambda: "http" in str(get(srv.port, "/metrics").body), what="metrics")
    srv.proc.send_signal(signal.SIGTERM)
    srv.wait_log("shutting down")
    c.send(b"\r\n")  # ... is still answered, and says the server is stopping
    r = c.response()
    assert r.status == 503 and b"stopping" in r.body
    assert r.headers["connection"] == "close"
    assert srv.proc.wait(10) == 0


def _metric(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    assert m, f"{name}{labels} missing"
    return float(m.group(1))


def test_metrics_follow_known_traffic(make_srv):
    srv = make_srv("--rate-limit", "0")
    before = get(srv.port, "/metrics").body.decode()
    native = srv.connect("nat")
    ws = WsClient(srv.port)
    ws.login("webm")
    native.expect("* webm joined")
    for i in range(5):
        native.send(f"n{i}")
        ws.expect(lambda e, i=i: e.get("text") == f"n{i}")
    for i in range(3):
        ws.line(f"w{i}")
        native.expect(f"webm: w{i}")
    text = get(srv.port, "/metrics").body.decode()
    assert _metric(text, "geventchat_users") == 2
    assert _metric(text, "geventchat_connections", '{protocol="websocket"}') == 1
    assert _metric(text, "geventchat_connections", '{protocol="native"}') == 1
    assert _metric(text, "geventchat_rooms") == 1
    assert _metric(text, "geventchat_backplane_up", '{backend="local"}') == 1
    # Lines: native name + 5 lines; WebSocket name + 3 lines.
    got = (_metric(text, "geventchat_lines_received_total")
           - _metric(before, "geventchat_lines_received_total"))
    assert got == 10
    # Each of the 8 lines reached both members (batches may merge lines, never more).
    deliveries = (_metric(text, "geventchat_deliveries_total")
                  - _metric(before, "geventchat_deliveries_total"))
    assert 2 <= deliveries <= 2 * 8 + 2  # + the join notice batches
    assert _metric(text, "geventchat_fanout_bytes_total") > 0
    # History writes happen in the background: the first one shows up a moment later.
    wait_for(lambda: _metric(get(srv.port, "/metrics").body.decode(),
                             "geventchat_history_write_seconds_count") >= 1,
             what="a history write in the metrics")
    assert "process_resident_memory_bytes" in text


# --- WebSocket -------------------------------------------------------------------------------


def test_websocket_and_native_chat_both_ways(make_srv):
    srv = make_srv()
    native = srv.connect("alice")
    native.send("before the web user came")
    ws = WsClient(srv.port)
    assert ws.status == 101
    assert "sec-websocket-extensions" not in ws.headers  # no compression: shared frames
    burst = ws.login("webuser")
    kinds = [e["type"] for e in burst]
    assert kinds[0] == "history" and "join" in kinds and kinds[-1] == "who"
    said = [e for e in burst if e["type"] == "message"]
    assert said[-1]["text"] == "before the web user came" and said[-1]["room"] == "lobby"
    assert "time" in said[-1]
    assert burst[-1]["names"] == ["alice", "webuser"]
    native.expect("* webuser joined")
    ws.line("<img src=x onerror=alert(1)>")
    native.expect("webuser: <img src=x onerror=alert(1)>")
    native.send("hello web")
    ws.expect(lambda e: e == {**e, "type": "message", "name": "alice", "text": "hello web"})
    ws.line("/msg alice psst")
    native.expect("(private) webuser -> alice: psst")
    ws.expect(lambda e: e["type"] == "private" and e["to"] == "alice")
    ws.line("/nosuch")
    err = ws.expect(lambda e: e["type"] == "error")[-1]
    assert err["code"] == "unknown_command"
    ws.line("/join dev")
    ws.expect(lambda e: e["type"] == "join" and e["room"] == "dev")
    native.expect("* webuser left (to dev)")
    ws.send_json({"type": "rooms"})
    rooms = ws.expect(lambda e: e["type"] == "rooms")[-1]["rooms"]
    assert [r["name"] for r in rooms] == ["lobby", "dev"]


def test_same_name_rules_as_native(make_srv):
    srv = make_srv()
    holder = srv.connect("taken")  # noqa: F841  (kept open: the name stays taken)
    ws = WsClient(srv.port)
    assert ws.events() == [{"type": "prompt", "what": "name"}]
    ws.line("Taken")
    err = ws.events()
    assert err[0]["type"] == "error" and err[0]["code"] == "name_taken"
    assert ws.events() == [{"type": "prompt", "what": "name"}]


def test_bad_messages_are_errors_not_disconnects(make_srv):
    srv = make_srv()
    ws = WsClient(srv.port)
    ws.login("bad")
    ws.send(frame(TEXT, b"not json"))
    assert ws.events()[0]["code"] == "bad_message"
    ws.send_json({"type": "whatever"})
    assert ws.events()[0]["code"] == "bad_message"
    ws.line("x" * 5000)
    assert ws.events()[0]["code"] == "line_too_long"
    ws.line("still here")
    ws.expect(lambda e: e.get("text") == "still here")


def test_wrong_origin_refused(make_srv):
    srv = make_srv()
    ws = WsClient(srv.port, origin="http://evil.example")
    assert ws.status == 403
    assert ws.closed()
    assert WsClient(srv.port, origin=None).status == 101  # non-browser clients send none
    assert WsClient(srv.port, origin=f"https://127.0.0.1:{srv.port}").status == 403  # scheme


def test_allowed_origin_widens(make_srv):
    srv = make_srv("--allowed-origin", "https://chat.example.org")
    assert WsClient(srv.port, origin="https://chat.example.org").status == 101
    assert WsClient(srv.port, origin="https://other.example.org").status == 403


def test_fragmented_message_with_ping_between(make_srv):
    srv = make_srv()
    ws = WsClient(srv.port)
    ws.login("frag")
    data = b'{"type": "line", "text": "in three pieces"}'
    ws.send(frame(TEXT, data[:10], fin=False))
    ws.send(frame(PING, b"hi"))  # control frames may come between fragments
    assert ws.recv_frame() == (PONG, b"hi")
    ws.send(frame(CONT, data[10:20], fin=False))
    ws.send(frame(CONT, data[20:]))
    ws.expect(lambda e: e.get("text") == "in three pieces")


def test_oversized_message_closed_1009(make_srv):
    srv = make_srv()
    ws = WsClient(srv.port)
    ws.login("big")
    ws.send(frame(TEXT, b"x" * 100_000))
    assert ws.close_code()[0] == 1009
    assert ws.closed()


def test_oversized_fragments_closed_1009(make_srv):
    srv = make_srv()
    ws = WsClient(srv.port)
    ws.login("bigfrag")
    for _ in range(5):
        ws.send(frame(TEXT if _ == 0 else CONT, b"x" * 4000, fin=False))
    assert ws.close_code()[0] == 1009


def test_binary_and_unmasked_frames_close(make_srv):
    srv = make_srv()
    ws = WsClient(srv.port)
    ws.login("bin")
    ws.send(frame(BINARY, b"\x00\x01"))
    assert ws.close_code()[0] == 1003
    ws2 = WsClient(srv.port)
    ws2.send(frame(TEXT, b'{"type":"line","text":"x"}', mask=False))
    assert ws2.close_code()[0] == 1002


def test_close_handshake(make_srv):
    srv = make_srv()
    native = srv.connect("watcher")
    ws = WsClient(srv.port)
    ws.login("closer")
    native.expect("* closer joined")
    ws.send(frame(CLOSE, struct.pack("!H", 1000) + b"bye"))
    assert ws.close_code() == (1000, "bye")  # the server echoes the close...
    assert ws.closed()  # ... and closes the TCP connection
    native.expect("* closer left")


def test_quit_closes_with_1000(make_srv):
    srv = make_srv()
    ws = WsClient(srv.port)
    ws.login("quitter")
    ws.line("/quit")
    assert ws.close_code() == (1000, "quit")


def test_shutdown_closes_with_going_away(make_srv):
    srv = make_srv()
    ws = WsClient(srv.port)
    ws.login("stayer")
    srv.proc.send_signal(signal.SIGTERM)
    ws.expect(lambda e: e["type"] == "shutdown")
    assert ws.close_code()[0] == 1001
    assert srv.proc.wait(10) == 0


# --- TLS -------------------------------------------------------------------------------------


def test_https_and_wss(tmp_path):
    trustme = pytest.importorskip("trustme")
    from tests.helpers import ServerProcess

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    chain, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    chain.write_bytes(b"".join(p.bytes() for p in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key))
    key.chmod(0o600)
    srv = ServerProcess(tmp_path, "--tls-cert", str(chain), "--tls-key", str(key)).start()
    try:
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)

        def tls_sock() -> socket.socket:
            raw = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            return ctx.wrap_socket(raw, server_hostname="127.0.0.1")

        c = Conn(srv.port, tls_sock())
        r = c.request("/")
        assert r.status == 200 and "wss://" in r.headers["content-security-policy"]
        ws = WsClient(srv.port, sock=tls_sock(), origin=f"https://127.0.0.1:{srv.port}")
        assert ws.status == 101
        ws.login("secure")
        ws.line("over tls")
        ws.expect(lambda e: e.get("text") == "over tls")
        plain_origin = WsClient(srv.port, sock=tls_sock(), origin=f"http://127.0.0.1:{srv.port}")
        assert plain_origin.status == 403
    finally:
        srv.kill()
