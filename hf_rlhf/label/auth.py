"""Tokens and CSRF for the labeling app.

Labelers and admins log in with a link holding a token (`secrets.token_urlsafe(32)`, 256 bits); the database keeps
only its sha256, so a leaked database opens no session and a lost link is replaced, never shown again. The login
sets the token in an HttpOnly, SameSite=Strict cookie. Every form carries a CSRF token, an HMAC of the session's
token hash under the database's secret: a page of another site can neither read it nor forge it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

COOKIE = "hf_rlhf_label"
TOKEN_BYTES = 32


def new_token() -> str:
    """A fresh login token (URL-safe text)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> str:
    """What the database stores of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


def csrf_token(secret: str, token_hash: str) -> str:
    """The CSRF token of a session (its forms carry it; a POST without it is refused)."""
    return hmac.new(secret.encode(), f"csrf:{token_hash}".encode(), hashlib.sha256).hexdigest()


def check_csrf(secret: str, token_hash: str, sent: str | None) -> bool:
    return bool(sent) and hmac.compare_digest(csrf_token(secret, token_hash), sent)


def login_path(token: str) -> str:
    """The path of a login link (the server's address goes in front)."""
    return f"/login/{token}"
