"""Full-duplex relay between the TLS stream and prog's pipes.

Each direction copies one chunk at a time and waits while the other side is
full, so a slow reader slows its writer and memory stays flat. The session
ends when both directions are done; neither loses a byte the other side wrote.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass

import gevent

from s6tls.shell.fdio import grow_pipe, read_into, shared_buffer, write_all
from s6tls.shell.tls import PLAIN_CHUNK, TlsStream


@dataclass
class RelayEnd:
    """How a session's relay ended, for the log."""

    ragged_eof: bool = False  # the peer ended without close_notify
    error: str | None = None  # the connection broke
    # We had already said all we had: a peer that then aborts (many clients
    # answer a bare FIN with an alert) lost nothing.
    after_our_end: bool = False


# Where prog's output is read, for the whole process (see s6tls.shell.fdio).
_FROM_PROG = shared_buffer(PLAIN_CHUNK)


def _to_prog(stream: TlsStream, fd: int, end: RelayEnd) -> None:
    """Peer → prog, until the peer's EOF (then prog's stdin gets EOF)."""
    try:
        grown = False
        while data := stream.read():
            if write_all(fd, data) and not grown:
                grown = True
                grow_pipe(fd)
        end.ragged_eof = not stream.clean_eof
    except BrokenPipeError:
        pass  # prog stopped reading: what the peer sends now has nowhere to go
    except (ssl.SSLError, OSError) as e:
        end.error = f"unable to read from remote: {getattr(e, 'reason', None) or e.strerror or e}"
    finally:
        os.close(fd)


def relay(stream: TlsStream, stdin: int, stdout: int, close_notify: bool) -> RelayEnd:
    """Relay until both directions are done; closes both pipe ends."""
    end = RelayEnd()
    upstream = gevent.spawn(_to_prog, stream, stdin, end)
    try:
        grown = False
        buf = _FROM_PROG
        while n := read_into(stdout, buf):
            if n == PLAIN_CHUNK and not grown:
                grown = True
                grow_pipe(stdout)
            stream.write(buf[:n])
    except (ssl.SSLError, OSError) as e:
        end.error = end.error or f"unable to write to remote: {e.strerror or e}"
        upstream.kill()
        return end
    finally:
        os.close(stdout)

    # prog is done talking. -S, or a peer that already said close_notify, gets
    # close_notify and a full close; otherwise half-close and keep listening.
    try:
        if close_notify or (upstream.ready() and stream.clean_eof):
            stream.close_notify()
            upstream.kill()
        else:
            stream.half_close()
            end.after_our_end = True
            upstream.join()
    except (ssl.SSLError, OSError):
        upstream.kill()
    return end
