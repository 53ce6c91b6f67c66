"""A worker that fails at once: one line on stderr, exit code 3."""

import sys

print("crasher: boom, cannot reach the database", file=sys.stderr, flush=True)
sys.exit(3)
