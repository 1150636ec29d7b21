"""Room topics that survive a restart: one small JSON file beside the history.

``history.topics.json`` maps each room's key to its topic, who set it and when::

    {"version": 1, "topics": {"dev": {"room": "dev", "text": "ship it", "by": "alice",
                                       "time": "2026-12-02T06:30:00+00:00"}}}

Setting a topic never blocks the loop: the map changes in memory at once, and one
background greenlet rewrites the file (atomically, mode 0600, in the threadpool) at most
every :data:`SAVE_DELAY` seconds. The file is read once at start; it holds one entry per
room with a topic, so it stays small.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime

import gevent
from gevent.event import Event

from geventchat.core.text import clean
from geventchat.store import atomic

log = logging.getLogger(__name__)

VERSION = 1
#: Topic changes within this many seconds are written in one go.
SAVE_DELAY = 0.5
#: Longest topic kept (characters): more than any protocol shows.
TOPIC_MAX = 1000


@dataclass(frozen=True, slots=True)
class StoredTopic:
    room: str
    text: str
    by: str
    time: datetime


class TopicStore:
    """Every room's topic, in memory and in one JSON file (``path=None``: memory only)."""

    def __init__(self, path: str | os.PathLike | None) -> None:
        self.path = None if path is None else os.fspath(path)
        self._topics: dict[str, StoredTopic] = _load(self.path) if self.path else {}
        self._dirty = Event()
        self._saver: gevent.Greenlet | None = None
        self._saved = Event()
        self._saved.set()

    def get(self, key: str) -> StoredTopic | None:
        return self._topics.get(key)

    def set(self, key: str, room: str, text: str, by: str, when: datetime) -> None:
        """Remember a topic (empty text forgets it); written to disk soon, never now."""
        if text:
            self._topics[key] = StoredTopic(room, text[:TOPIC_MAX], by, when)
        elif self._topics.pop(key, None) is None:
            return
        if self.path is None:
            return
        self._saved.clear()
        self._dirty.set()
        if self._saver is None or self._saver.dead:
            self._saver = gevent.spawn(self._save_loop)

    def flush(self, timeout: float) -> bool:
        """Wait (this greenlet) until what was set is on disk; False on timeout."""
        return self._saved.wait(timeout)

    def _save_loop(self) -> None:
        while True:
            self._dirty.wait()
            gevent.sleep(SAVE_DELAY)  # gather a burst of changes into one write
            self._dirty.clear()
            blob = _encode(self._topics)
            try:
                gevent.get_hub().threadpool.apply(atomic.replace_file,
                                                  (self.path, blob, 0o600))
            except OSError as exc:
                log.error("cannot write topics file %s: %s; retrying", self.path,
                          exc.strerror or exc)
                gevent.sleep(1.0)
                self._dirty.set()
                continue
            if not self._dirty.is_set():
                self._saved.set()


def _encode(topics: dict[str, StoredTopic]) -> bytes:
    data = {"version": VERSION, "topics": {
        key: {"room": t.room, "text": t.text, "by": t.by, "time": t.time.isoformat()}
        for key, t in sorted(topics.items())}}
    return (json.dumps(data, ensure_ascii=False, indent=1) + "\n").encode("utf-8")


def _load(path: str) -> dict[str, StoredTopic]:
    """The topics in ``path``; a missing file is none, a damaged one is logged and
    ignored (topics are not worth refusing to start for)."""
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
        entries = data["topics"]
        topics = {}
        for key, e in entries.items():
            when = datetime.fromisoformat(e["time"])
            if when.utcoffset() is None:
                raise ValueError("time without offset")
            topics[str(key)] = StoredTopic(clean(str(e["room"])), clean(str(e["text"]))[:TOPIC_MAX],
                                           clean(str(e["by"])), when.astimezone(UTC))
        return topics
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("topics file %s unusable (%s): starting without stored topics", path, exc)
        return {}
