"""Host and visitor: who may do what affects everyone else (unloading models, memory settings).

The decision is plain data in, a yes or no out, so it is tested without a server. The tab passes in
who the request comes from (the `--auth` login, or the Hugging Face login on a Space) and this module
says whether that is the host:

1. `--admin USER` (one of `--auth`'s users): that logged-in user, and nobody else, is the host.
2. On a Hugging Face Space (`SPACE_ID` is set) without `--admin`: the Space's owner, signed in with
   Hugging Face (OAuth; the Space needs `hf_oauth: true`), whose username is `SPACE_AUTHOR_NAME`.
3. Otherwise everyone is the host if the app is private to this machine (listening on loopback only and
   not shared), and nobody is if it is not. Where a request comes from is never used: `--share`
   traffic reaches the server through a local tunnel, so it arrives from loopback too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass(frozen=True)
class Access:
    """How the server is exposed, from its flags and environment."""

    admin: str | None = None  # --admin
    share: bool = False  # --share
    listen_host: str = "127.0.0.1"  # --host
    space_owner: str | None = None  # SPACE_AUTHOR_NAME on a Hugging Face Space

    @classmethod
    def from_settings(
        cls,
        admin: str | None,
        auth_users: Sequence[str],
        share: bool,
        listen_host: str,
        environ: Mapping[str, str] = os.environ,
    ) -> Access:
        """Check `--admin` against `--auth`'s users (ValueError naming the flag) and read the Space's owner."""
        if admin is not None and admin not in auth_users:
            known = f"its users are {', '.join(sorted(auth_users))}" if auth_users else "no --auth was given"
            raise ValueError(f"--admin {admin!r} must be one of --auth's users; {known}")
        space_owner = environ.get("SPACE_AUTHOR_NAME") if environ.get("SPACE_ID") else None
        return cls(admin=admin, share=share, listen_host=listen_host, space_owner=space_owner or None)

    @property
    def private(self) -> bool:
        """Reachable only from this machine: not shared, listening on loopback only."""
        return not self.share and self.listen_host in LOOPBACK_HOSTS

    def is_host(self, username: str | None, hf_username: str | None = None) -> bool:
        """`username`: the `--auth` login of the request; `hf_username`: its Hugging Face login on a Space."""
        if self.admin is not None:
            return username == self.admin
        if self.space_owner is not None:
            return hf_username == self.space_owner
        return self.private

    def who_is_host(self) -> str:
        """For the refusal a visitor gets: who may do this here."""
        if self.admin is not None:
            return f"only the host (the user {self.admin!r}) may do this"
        if self.space_owner is not None:
            return f"only this Space's owner ({self.space_owner}), signed in with Hugging Face, may do this"
        return (
            "host actions are off because this server is shared or listens beyond this machine; "
            "restart it with --auth and --admin USER to name a host"
        )
