"""A command in a real pseudo-terminal of a given size, its screen emulated by pyte.

What a user sees is what the tests read: rich draws its live views for a
terminal (cursor movement, redraws), and only a terminal emulator turns that
back into the lines on screen.  Ctrl-C is the byte a keyboard sends (``\\x03``
through the tty), not a signal sent around the terminal.
"""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import pyte

from clitools import _env
from procs import wait_until


class TerminalProcess:
    """``clm-workers ARGS`` with stdin, stdout and stderr on one pty of ``columns`` x ``lines``."""

    def __init__(self, folder: Path, *args: str, columns: int = 80, lines: int = 30,
                 env: dict[str, str] | None = None) -> None:
        self.screen = pyte.Screen(columns, lines)
        self.stream = pyte.ByteStream(self.screen)
        self.raw = bytearray()
        self._lock = threading.Lock()
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
        term_env = {k: v for k, v in _env(env).items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
        term_env["TERM"] = "xterm-256color"
        # setsid -c: a session of its own whose controlling terminal is the pty, as in a
        # terminal window (no preexec_fn: the test process has threads).
        self.popen = subprocess.Popen(
            ["setsid", "-c", sys.executable, "-m", "clm_workers", *args], stdin=slave, stdout=slave,
            stderr=slave, cwd=folder, env=term_env,
        )
        os.close(slave)
        self._master = master
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self._master, 65536)
            except OSError:  # the other side closed
                return
            if not data:
                return
            with self._lock:
                self.raw.extend(data)
                self.stream.feed(data)

    def text(self) -> str:
        """The screen as it is now: one string per line, trailing blanks cut."""
        with self._lock:
            return "\n".join(line.rstrip() for line in self.screen.display).rstrip("\n")

    def wait_for(self, text: str, timeout: float = 30) -> str:
        def seen() -> bool:
            if self.popen.poll() is not None and text not in self.text():
                self._reader.join(timeout=5)
                if text not in self.text():
                    raise AssertionError(f"exited with {self.popen.returncode}; screen:\n{self.text()}")
            return text in self.text()
        wait_until(seen, timeout)
        return self.text()

    def ctrl_c(self) -> None:
        """Press Ctrl-C: the terminal sends SIGINT to its foreground process group."""
        os.write(self._master, b"\x03")

    def wait(self, timeout: float = 30) -> int:
        code = self.popen.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout=10)
        self._reader.join(timeout=5)
        os.close(self._master)
