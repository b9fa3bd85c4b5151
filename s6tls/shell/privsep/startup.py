"""Privilege separation's start-up steps: fork the root helper, drop root
for good, and serve through the helper (``s6tls.shell.main.separate`` runs
them in this order, then confines the process).
"""

from __future__ import annotations

import gc
import os
import signal
import sys
from collections.abc import Iterable

from s6tls.shell.fdio import to_null
from s6tls.shell.privsep.client import HelperClient
from s6tls.shell.privsep.helper import Helper
from s6tls.shell.privsep.wire import channel
from s6tls.shell.service import Service
from s6tls.shell.sigmask import fork_holding, release


def _unmoved(_signum: int, _frame: object) -> None:
    pass


_GROUP_SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGABRT)


def start_helper(service: Service, not_for_helper: Iterable[int]) -> HelperClient:
    """Fork the root helper; this process's side of its channel.

    The helper closes ``not_for_helper`` (the listening socket) at once.
    """
    ours, theirs = channel()
    # What both processes hold from now on stays shared: no collection in
    # either walks these objects, and so copies their pages (gc.freeze's
    # own advice, without a collection first, which would leave holes that
    # new objects then fill).
    gc.freeze()
    pid = fork_holding(_GROUP_SIGNALS)  # until the helper has its handlers
    if pid == 0:
        ours.close()
        for fd in not_for_helper:
            os.close(fd)
        # The helper must not hold stdout open: -1's reader waits for its EOF.
        to_null(0, 1)
        # It ends when the last process it serves is gone, not on a signal
        # sent to the whole process group (Ctrl-C, timeout): handled, not
        # ignored, so that the progs it starts get them as they should.
        for signum in _GROUP_SIGNALS:
            signal.signal(signum, _unmoved)
        release(_GROUP_SIGNALS)
        try:
            paths = service.resolver.paths() if service.resolver else ()
            Helper(theirs, service.options, service.base_env, service.rules, paths).serve()
        finally:
            sys.stderr.flush()
            os._exit(111)
    theirs.close()
    return HelperClient(ours)


def drop_privileges(uid: int, gid: int) -> None:
    """Become uid:gid with no supplementary groups, with no way back to root."""
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


def serve_through(service: Service, helper: HelperClient) -> None:
    """Start progs, read key files and look up rules through the helper."""
    service.launcher = helper
    service.contexts.files = helper
    if service.rules is not None:
        service.rules = helper
    if service.resolver is not None:
        service.resolver.files = helper
