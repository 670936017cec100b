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
- On a Hugging Face Space, the Space's proxy connects from an address of its own and appends the
  visitor's; the Space is reachable only through it, so there (and with `--behind-proxy`, for a proxy
  of the host's own on another address: `trust_forwarded`) the last entry is taken from any peer.
- A person on this machine could send their own `X-Forwarded-For` over loopback; they can reach the
  machine anyway.
"""

from __future__ import annotations

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
        last = forwarded.split(",")[-1].strip() if forwarded else ""
        if last:
            return last
    return request.client.host


def client_id(request: RequestLike | None, trust_forwarded: bool, username: str | None = None) -> str:
    """The client a request is charged to: `user:NAME` when logged in, else `address:IP`."""
    if username:
        return f"user:{username}"
    return f"address:{client_address(request, trust_forwarded)}"
