"""The HTTP API (Litestar)."""

from .app import ApiParts, create_app

__all__ = ["ApiParts", "create_app"]
