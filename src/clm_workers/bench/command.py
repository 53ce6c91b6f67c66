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
    code = _run_simulated(options) if options.scenarios else 0
    if options.clm:
        code = max(code, _run_real_clm(options))
    return code


def _run_real_clm(options: BenchOptions) -> int:
    """The real-CLM scenario, or one line saying why it is skipped."""
    from . import clm_output, realclm

    if realclm.clm_version() is None:
        print("clm-workers bench: the real-CLM scenario is skipped: CLM is not installed "
              "(pip install 'coding-academy-lecture-manager[notebook]' to run it)", file=sys.stderr)
        return 0
    result = realclm.run_clm_bench(
        sizes=options.clm_sizes, repeats=options.repeats, concurrency=options.concurrency,
        command=options.command,
    )
    print(clm_output.render_markdown(result), flush=True)
    if options.out is not None:
        for path in clm_output.write_outputs(result, Path(options.out)):
            print(f"clm-workers bench: wrote {path}", file=sys.stderr)
    lost = [r for r in result.runs if r.idle != r.workers]
    if lost:
        print(f"clm-workers bench: {len(lost)} real-CLM runs did not get every worker idle", file=sys.stderr)
        return 1
    return 0


def _run_simulated(options: BenchOptions) -> int:
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
