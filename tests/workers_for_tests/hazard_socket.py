"""Opens a socket when imported and keeps it (a client that connects at import)."""

import socket

CONNECTION = socket.socketpair()
