"""Who a request comes from, for fair turns and quotas.

- With `--auth` (or Hugging Face OAuth on a Space): the logged-in user. A whole room behind one address
  stays many clients, and a user is one client in every tab and browser.
- Without a login: the visitor's address. A new tab or a new session is the same client, so opening one
  neither dodges a quota nor earns an extra turn. People behind one NAT share one address and so one
  client: give a room logins (`--auth`) to tell them apart.

Where the address comes from:
- Directly connected: the socket's peer address.
- Through `--share`: Gradio's tunnel client connects from this machine, so every visitor's peer is
  127.0.0.1. The share server (an frp HTTP proxy) appends the visitor's address to `X-Forwarded-For`.
- On a Hugging Face Space: the Space's proxy does the same.
In those two cases (`trust_forwarded`), and only when the peer itself is loopback (the local tunnel or
proxy), the *last* `X-Forwarded-For` entry is used: it is the one our own proxy appended, whereas
anything before it was sent by the visitor and could be forged. Otherwise the header is ignored, so a
visitor cannot pick a new identity by sending one.
"""

from __future__ import annotations

import ipaddress
from typing import Protocol

UNKNOWN = "unknown"


class _Client(Protocol):
    host: str


class RequestLike(Protocol):
    """What we read of a `gr.Request` (or a Starlette request)."""

    @property
    def headers(self) -> object: ...

    @property
    def client(self) -> _Client | None: ...


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def client_address(request: RequestLike | None, trust_forwarded: bool) -> str:
    """The visitor's address, read as the module docstring explains."""
    if request is None or request.client is None:
        return UNKNOWN
    peer = request.client.host
    if trust_forwarded and _is_loopback(peer):
        forwarded = request.headers.get("x-forwarded-for")  # type: ignore[attr-defined]
        if forwarded:
            last = forwarded.split(",")[-1].strip()
            if last:
                return last
    return peer


def client_id(request: RequestLike | None, trust_forwarded: bool, username: str | None = None) -> str:
    """The client a request is charged to: `user:NAME` when logged in, else `address:IP`."""
    if username:
        return f"user:{username}"
    return f"address:{client_address(request, trust_forwarded)}"
