"""``python -m geventchat``: the same entry point as the ``geventchat`` command."""

from geventchat.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
