"""Ports on 127.0.0.1 for the tests that run a multi-worker cluster as local processes."""

import socket


def free_ports(count):
    """`count` ports free now (the workers bind them a moment later)."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports
