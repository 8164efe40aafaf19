"""Generating API keys."""

from __future__ import annotations

import secrets


def new_key() -> str:
    """32 random bytes, URL-safe base64 (43 characters): safe in TOML, headers and shells."""
    return secrets.token_urlsafe(32)
