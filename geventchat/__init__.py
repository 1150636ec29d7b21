"""geventchat: a self-hosted terminal chat server on gevent."""

__version__ = "0.1.0"
