"""``clm-workers bench``: run, print the markdown, write docs/benchmarks.*."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import ConfigError
from .output import render_markdown, write_outputs
from .runner import BenchOptions, run_bench


def run_command(options: BenchOptions) -> int:
    """0 when every run registered every worker, 1 when some run lost workers (the bench is broken)."""
    if options.out is not None and options.out.exists() and not options.out.is_dir():
        raise ConfigError("--out", str(options.out), "a folder (created if missing)")
    result = run_bench(options)
    print(render_markdown(result), flush=True)
    if options.out is not None:
        for path in write_outputs(result, Path(options.out)):
            print(f"clm-workers bench: wrote {path}", file=sys.stderr)
    lost = [r for r in result.runs if r.registered != r.workers]
    if lost:
        print(f"clm-workers bench: {len(lost)} runs did not register every worker; "
              "their worker logs were in the run's temporary folder", file=sys.stderr)
        return 1
    return 0
