"""Helpers for tests that start `accelerate launch` with several processes."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port free on the loopback now, so that launches in one test run never share a rendezvous port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
