"""The web client, shipped as package data (index.html)."""
