"""The identity prog runs as (-u -g -G -U), applied by exec'ing setpriv.

Changing identity in the spawned child would need a real fork of the server;
prefixing prog with util-linux's ``setpriv`` keeps the cheap vfork spawn.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from s6tls.errors import UsageError
from s6tls.options import Options, parse_groups, unsigned


class IdentityError(Exception):
    """UID, GID or GIDLIST in the environment is not usable."""


@dataclass(frozen=True)
class Identity:
    """Who prog runs as; all None means the server's own identity."""

    uid: int | None = None
    gid: int | None = None
    groups: tuple[int, ...] | None = None
    from_env: bool = False

    @classmethod
    def from_options(cls, opts: Options) -> Identity:
        return cls(opts.uid, opts.gid, opts.groups, opts.identity_from_env)

    @property
    def changes(self) -> bool:
        return self.from_env or any(v is not None for v in (self.uid, self.gid, self.groups))

    def resolve(
        self, env: Mapping[str, str]
    ) -> tuple[int | None, int | None, tuple[int, ...] | None]:
        """uid, gid and groups for this connection (-U reads them from env)."""
        if not self.from_env:
            return self.uid, self.gid, self.groups
        try:
            uid = unsigned(env["UID"], "UID") if "UID" in env else None
            gid = unsigned(env["GID"], "GID") if "GID" in env else None
            groups = parse_groups(env["GIDLIST"]) if "GIDLIST" in env else None
        except UsageError as e:
            raise IdentityError(str(e)) from None
        return uid, gid, groups

    def wrap(self, argv: tuple[str, ...], env: Mapping[str, str]) -> tuple[str, ...]:
        """argv, prefixed so that it runs with this identity."""
        if not self.changes:
            return argv
        uid, gid, groups = self.resolve(env)
        prefix = ["setpriv"]
        if gid is not None:
            prefix += ["--regid", str(gid)]
        if uid is not None:
            prefix += ["--reuid", str(uid)]
        if groups is not None:
            prefix += ["--groups", ",".join(map(str, groups))] if groups else ["--clear-groups"]
        elif uid is not None or gid is not None:
            prefix += ["--clear-groups"]  # never leave root's groups to a dropped prog
        if len(prefix) == 1:
            return argv
        return (*prefix, "--", *argv)
