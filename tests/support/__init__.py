"""Helpers shared by the system tests: certificates, a running server, clients."""
