"""tools/bench: s6-tlsserver against stunnel, socat and tcpserver on loopback."""
