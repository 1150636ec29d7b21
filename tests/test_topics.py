"""Room topics survive a restart."""

from __future__ import annotations

import json

from tests.helpers import wait_for


def test_topic_survives_a_restart(make_srv):
    srv = make_srv()
    alice = srv.connect("alice")
    alice.send("/join dev")
    alice.expect("* alice joined")
    alice.send("/topic ship it on friday")
    alice.expect("* alice set the topic of dev: ship it on friday")
    srv.restart()
    bob = srv.connect("bob")
    bob.send("/join dev")
    bob.expect("* topic of dev: ship it on friday")
    topics = srv.history.with_name("history.topics.json")
    assert topics.stat().st_mode & 0o077 == 0
    data = json.loads(topics.read_text("utf-8"))
    assert data["topics"]["dev"]["by"] == "alice"


def test_cleared_topic_stays_cleared_after_a_restart(make_srv):
    srv = make_srv()
    alice = srv.connect("alice")
    alice.send("/join dev")
    alice.expect("* alice joined")
    alice.send("/topic first")
    alice.expect("* alice set the topic of dev: first")
    alice.send("/topic -")
    alice.expect("* alice cleared the topic of dev")
    topics = srv.history.with_name("history.topics.json")
    wait_for(lambda: topics.exists() and "first" not in topics.read_text("utf-8"),
             what="the cleared topic written")
    srv.restart()
    bob = srv.connect("bob")
    bob.send("/join dev")
    bob.send("/topic")
    bob.expect("* dev has no topic")
