"""What runs for a connection: prog or the rule's exec, as whom, with what environment.

One pure function, so that the server and its privileged helper (when the
TLS engine runs as TLS_UID) build exactly the same command from the same facts.
"""

from __future__ import annotations

from collections.abc import Mapping

from s6tls.environ import prog_environ
from s6tls.identity import Identity
from s6tls.options import Options
from s6tls.sslvars import TlsInfo


def prog_command(
    opts: Options, tcp_env: Mapping[str, str], exec_text: str, info: TlsInfo
) -> tuple[tuple[str, ...], dict[str, str]]:
    """argv and environment for prog, from the environment after the rules.

    An ``exec`` rule's text (the verdict's, ``s6tls.rules.verdict``) replaces
    prog with ``execlineb -c TEXT``; -u/-g/-G/-U prefix it with setpriv;
    -U's variables are used, then removed.
    """
    argv = ("execlineb", "-c", exec_text) if exec_text else opts.prog
    argv = Identity.from_options(opts).wrap(argv, tcp_env)
    env = prog_environ(tcp_env, info, opts.keep_tls_env, drop_identity=opts.identity_from_env)
    return argv, env
