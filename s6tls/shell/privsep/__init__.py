"""Privilege separation: the TLS engine runs as TLS_UID, a small helper keeps root.

Upstream runs its TLS engine (s6-tlsd-io) as TLS_UID:TLS_GID, so a bug in
TLS parsing never runs as root. Here the TLS engine lives in the server
process, so when started as root with TLS_UID/TLS_GID set, the server:

1. binds its socket and loads its key material as root;
2. forks this helper, which keeps root and never touches the network;
3. drops to TLS_UID:TLS_GID with no supplementary groups, for good
   (real, effective and saved ids all changed);
4. confines itself (``s6tls.shell.confine``), unless S6TLS_CONFINE=0.

The unprivileged server then accepts, reads PROXY headers, talks TLS and
relays; whatever needs root goes to the helper over a socketpair, as JSON
messages (never pickle: the server side is the untrusted one here).

The parts, one job each:

- ``wire``: the messages, and the checks every fact from the requester
  passes before the helper uses it;
- ``helper``: the root helper, a blocking loop that answers them;
- ``client``: the unprivileged side, the helper as the server sees it
  (a launcher, a file reader and a rule source);
- ``startup``: the steps above, fork, drop and serve through the helper
  (``s6tls.shell.main.separate`` calls them in order, then confines).

Threat model: an attacker who takes over the unprivileged server can ask
the helper only for what the configuration allows anyway. The helper

- starts only the command line's prog or the ``exec`` of a rule it finds
  itself in the ruleset, with the identity the options (or, for -U, the
  server's environment and that rule) give, and an environment it builds
  itself from the same pure functions as the server: the requester supplies
  the connection's facts (addresses, names, TLS parameters), which only ever
  become the values of TCP* and SSL_* variables;
- opens (read-only, regular files only), stats or lists only the files
  named by KEYFILE, CERTFILE, CAFILE, CADIR (and their ``:name`` forms) in
  the server's environment or in a rule's environment, the files inside
  such a CADIR, and the files the lookups read (resolv.conf, /etc/hosts);
- signals only the progs it started and that are still running;
- answers rule look-ups from the ruleset given on the command line;
- reads how busy the serving processes are (``/proc/PID/schedstat``,
  world-readable anyway), for the worker pool.

Through the helper, the worst a compromised server can do is run the
configured prog for a made-up client, or read the configured key files: the
same as a server that was never separated. By itself it can do less still:
once confined, it opens no file, runs no program, takes no other identity,
ptraces or signals no process but its own workers, and reaches the network
only through the sockets it holds (and, with lookups on, over UDP and to
TCP ports 53 and 113). What it keeps is what it serves: the sessions of that
process and the key pairs loaded in it. The reference page compares this
with upstream's s6-tlsd-io.
"""
