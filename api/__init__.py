"""Vigil's alerts API (Litestar + msgspec + SQLite). ``create_app(settings)`` builds it;
``python -m api`` serves it."""

from api.app import create_app

__all__ = ["create_app"]
