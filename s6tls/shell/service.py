"""What every connection of one server shares: options, logs, caches."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from s6tls.logline import Log
from s6tls.options import Options
from s6tls.rules import RuleSource
from s6tls.shell.contexts import ContextCache
from s6tls.shell.spawn import Launcher
from s6tls.tlsconfig import TlsSettings, settings_from

if TYPE_CHECKING:
    from s6tls.shell.names import Resolver  # imported only when lookups are on


@dataclass
class Service:
    """The server's configuration and its long-lived caches."""

    options: Options
    log: Log
    base_env: Mapping[str, str]
    contexts: ContextCache
    launcher: Launcher
    rules: RuleSource | None = None  # with -i or -x
    resolver: Resolver | None = None  # when DNS or IDENT lookups are on

    def tls_settings(self, env: Mapping[str, str]) -> TlsSettings:
        """The TLS files for one connection: the access rule may have chosen them."""
        return settings_from(env, self.options.snilevel, self.options.client_cert)
