"""Starts a thread when imported (some libraries do: a fork would copy its locks, not it)."""

import threading

threading.Thread(target=threading.Event().wait, name="import-time-thread", daemon=True).start()
