"""Confinement of the TLS engine: what a taken-over TLS process can still do.

With privilege separation (``s6tls.shell.privsep``) the process that parses
TLS from the network needs, once it has dropped to TLS_UID, no file, no new
program and no new identity: the root helper opens files, starts progs and
looks up rules for it. So, after the drop, that process confines itself for
good, and every worker it forks inherits it:

- ``no_new_privs``: no exec could give privileges back (nor any exec at all,
  below);
- not dumpable, and no core files: no memory image with key material on
  disk, and no process of TLS_UID may ptrace it or read its memory;
- Landlock: no file system access at all (every right the kernel knows is
  handled, none granted); TCP ``bind``/``connect`` only to what the lookups
  need (connect to port 53 for DNS, and a bind to an ephemeral port plus a
  connect to port 113 for IDENT); no signal to a process outside the
  confined ones, no abstract UNIX socket outside them;
- a seccomp filter (libseccomp's, for its handling of every architecture's
  syscall numbers and compat ABIs) that refuses with EPERM: ``execve``,
  ``execveat``, ``ptrace``, ``process_vm_readv``/``writev``, mounts and
  namespaces, ``bpf``, ``perf_event_open``, ``userfaultfd``, io_uring, the
  kernel keyring, every ``set*id`` and ``setgroups``, ``capset``, changes
  of file ownership, modes, times and extended attributes, and ``socket``
  itself, but for UDP and TCP over IPv4 or IPv6 when lookups are on.

A kernel without Landlock, or a system without libseccomp, does not stop
the server: what could not be applied is named in one start-up warning.
Without privilege separation the server starts prog itself, and prog would
inherit all this (under no_new_privs, no setuid program such as qmail-queue
works), so nothing is applied there.

How: Landlock through three syscalls called with ctypes (``landlock``: their
numbers are the same on every architecture; a binding would be one more
dependency, and those on PyPI are young); seccomp through libseccomp, also
with ctypes (``seccomp``),
rather than a filter of our own: the syscall numbers of each architecture
and the compat ABIs (i386's int 0x80 and x32 on x86-64, which a deny-list
must refuse) are what it gets right. libseccomp compiles the filter in a
short-lived child at start-up, and the TLS engine only loads the program
(prctl): it never maps libseccomp, and neither it nor the root helper keeps
the memory the compiler took. Of the resource limits only the core
size is set: RLIMIT_NPROC counts every process of TLS_UID on the machine,
a memory limit would turn a busy moment into a crash, and the engine writes
no file. ``prctl`` and the errors of every layer are in ``syscalls``; this
module says what the engine needs and applies the layers in order.
"""

from __future__ import annotations

import importlib
import os
import resource
import socket
from collections.abc import Callable
from functools import partial

from s6tls.ident import IDENT_PORT
from s6tls.options import ClientCert, Options
from s6tls.resolvconf import DNS_PORT
from s6tls.shell.confine.landlock import Network, landlock
from s6tls.shell.confine.seccomp import compiled, engine_filter, load
from s6tls.shell.confine.syscalls import Unavailable, no_dumping, no_new_privs

# Modules that load on first use, where a confined process could not read
# them: with a client certificate, its digest and its reader; with rules, the
# TLS stage's keys and the ClientHello reader (a rule may set ALPN). (gevent
# also imports pickle when a greenlet fails, to keep its traceback; it does
# without when it cannot.)
_CLIENT_CERT_PRELOAD = ("hashlib", "s6tls.certinfo")
_RULES_PRELOAD = ("s6tls.rules.tlskeys", "s6tls.clienthello")


def engine_needs(opts: Options) -> tuple[Network, tuple[int, ...], tuple[str, ...]]:
    """What the TLS engine still needs under these options: its TCP, the
    socket families it creates, and the modules to load before confinement."""
    bind, connect = [], []
    if opts.dns:
        connect.append(DNS_PORT)  # a truncated UDP answer is asked again over TCP
    if opts.ident:
        bind.append(0)  # from the connection's local address, any port
        connect.append(IDENT_PORT)
    families = (socket.AF_INET, socket.AF_INET6) if opts.dns or opts.ident else ()
    preload: tuple[str, ...] = ()
    if opts.client_cert is not ClientCert.NONE:
        preload += _CLIENT_CERT_PRELOAD
    if opts.rulesdir is not None or opts.rulesfile is not None:
        preload += _RULES_PRELOAD
    return Network(tuple(bind), tuple(connect)), families, preload


def prepare(opts: Options) -> Callable[[], list[str]]:
    """Load what confining the TLS engine under these options needs, while
    files can still be read; return what confines this process for good,
    once it has dropped to TLS_UID, and returns what it could not apply,
    each as "what (why)"."""
    net, families, preload = engine_needs(opts)
    for name in preload:
        importlib.import_module(name)
    missing: list[str] = []

    def apply(layer: Callable[[], object]) -> None:
        try:
            layer()
        except Unavailable as e:
            missing.append(str(e))

    seccomp: list[bytes] = []  # compiled now, while libseccomp can be loaded
    apply(lambda: seccomp.append(compiled(partial(engine_filter, families))))

    def confine() -> list[str]:
        threads = len(os.listdir("/proc/self/task"))
        if threads != 1:  # Landlock and seccomp confine the calling thread only
            return [f"any confinement ({threads} threads)"]
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        apply(no_new_privs)
        apply(no_dumping)
        apply(lambda: missing.extend(landlock(net)))
        for program in seccomp:
            apply(partial(load, program))
        return missing

    return confine
