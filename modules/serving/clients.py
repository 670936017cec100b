"""Who a request comes from, for fair turns and quotas.

- With `--auth` (or Hugging Face OAuth on a Space): the logged-in user. A whole room behind one address
  stays many clients, and a user is one client in every tab and browser.
- Without a login: the visitor's address. A new tab or a new session is the same client, so opening one
  neither dodges a quota nor earns an extra turn. People behind one NAT share one address and so one
  client: give a room logins (`--auth`) to tell them apart.

Where the address comes from:
- Gradio's server (uvicorn) takes the socket's peer, except from a trusted proxy (by default 127.0.0.1;
  `$FORWARDED_ALLOW_IPS` changes that), where it takes the last `X-Forwarded-For` entry that is not
  itself a trusted proxy: the address the proxy saw. Entries before it were sent by the visitor and
  could be forged, so they are never used.
- Through `--share` that is what happens: Gradio's tunnel client connects from 127.0.0.1, and the share
  server (an frp HTTP proxy) appends the visitor's address.
- On a Hugging Face Space, `request.client.host` is an internal address of the Space's proxy, and the
  visitor's address is in `X-Forwarded-For`, possibly followed by internal hops. The Space is reachable
  only through that proxy, so there (and with `--behind-proxy`, for a proxy of the host's own on another
  address: `trust_forwarded`) the header is read from any peer: the last *public* address in it (the
  one the edge proxy saw; internal hops after it are skipped, forged entries before it are never
  reached), or the last entry when none is public (a proxy on a private network).
- A person on this machine could send their own `X-Forwarded-For` over loopback; they can reach the
  machine anyway.
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


def client_address(request: RequestLike | None, trust_forwarded: bool) -> str:
    """The visitor's address, read as the module docstring explains."""
    if request is None or request.client is None:
        return UNKNOWN
    if trust_forwarded:
        forwarded = request.headers.get("x-forwarded-for")  # type: ignore[attr-defined]
        entries = [entry.strip() for entry in (forwarded or "").split(",") if entry.strip()]
        public = [entry for entry in entries if _is_public(entry)]
        if public or entries:
            return (public or entries)[-1]
    return request.client.host


def _is_public(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_global
    except ValueError:
        return False


def client_id(request: RequestLike | None, trust_forwarded: bool, username: str | None = None) -> str:
    """The client a request is charged to: `user:NAME` when logged in, else `address:IP`."""
    if username:
        return f"user:{username}"
    return f"address:{client_address(request, trust_forwarded)}"
