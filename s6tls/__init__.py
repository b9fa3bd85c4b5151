"""s6tls: an inetd-style TLS super-server, drop-in for skarnet's s6-tlsserver."""

__version__ = "0.1.0"
