"""The ``clm-workers`` command line: argument parsing and display only."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from .config import resolve_number
from .errors import ConfigError, PoolStartupError

EXIT_BAD_INPUT = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clm-workers",
        description="Start and supervise CLM worker pools in parallel, with nothing leaked.",
    )
    parser.add_argument("--log-level", default="WARNING",
                        help="logging level of clm-workers itself (default: WARNING)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo", help="start simulated workers on a throw-away database, run jobs, stop",
        description="Start simulated workers across the notebook, plantuml and drawio types on a "
                    "temporary database, run a few jobs through them, stop everything.",
    )
    demo.add_argument("--workers", default="16", help="how many workers (1-1000, default 16)")
    demo.add_argument("--boot-delay", default="1.0",
                      help="seconds each simulated worker boots before registering (0-60, default 1.0)")
    demo.add_argument("--concurrency", default=None,
                      help="startup concurrency (1-1000; default: $CLM_MAX_WORKER_STARTUP_CONCURRENCY or 10)")
    bench = commands.add_parser(
        "bench", help="time every startup strategy side by side (writes docs/benchmarks.*)",
        description="Start simulated workers with CLM 0.3's sequential start, the proposal's thread "
                    "pool and both clm-workers slot modes, interleaved, for I/O- and CPU-bound boots; "
                    "print a markdown table and write docs/benchmarks.md, .json and .png.",
    )
    bench.add_argument("--quick", action="store_true",
                       help="smoke run: one small cell (N=4), one repeat, every strategy; writes "
                            "nothing unless --out is given")
    bench.add_argument("--sizes", default=None,
                       help="comma-separated pool sizes, each 1-1000 (default 8,16,32,64)")
    bench.add_argument("--scenarios", default=None,
                       help="comma-separated: io (1 s sleep per boot), cpu (0.2 s of CPU); default both")
    bench.add_argument("--repeats", default=None, help="repeats per cell (1-50, default 3)")
    bench.add_argument("--concurrency", default=None, help="startup concurrency (1-1000, default 10)")
    bench.add_argument("--out", default=None,
                       help="folder for benchmarks.md/.json/.png (default: docs; --quick: none)")
    bench.add_argument("--full-sequential", action="store_true",
                       help="run sequential every repeat even when the bench would take over 20 min")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "demo":
            from .demo import DemoOptions, run_demo

            options = DemoOptions(
                workers=_cli_number("--workers", args.workers, int, 1, 1000),
                boot_delay=_cli_number("--boot-delay", args.boot_delay, float, 0.0, 60.0),
                concurrency=None if args.concurrency is None
                else _cli_number("--concurrency", args.concurrency, int, 1, 1000),
            )
            return run_demo(options)
        if args.command == "bench":
            from .bench.command import run_command
            from .bench.runner import BenchOptions, with_scenarios

            settings: dict[str, object] = {
                "command": shlex.join(["clm-workers", *(sys.argv[1:] if argv is None else argv)]),
            }
            if args.sizes is not None:
                settings["sizes"] = tuple(
                    _cli_number("--sizes", size.strip(), int, 1, 1000) for size in args.sizes.split(",")
                )
            if args.repeats is not None:
                settings["repeats"] = _cli_number("--repeats", args.repeats, int, 1, 50)
            if args.concurrency is not None:
                settings["concurrency"] = _cli_number("--concurrency", args.concurrency, int, 1, 1000)
            if args.out is not None:
                settings["out"] = Path(args.out)
            if args.full_sequential:
                settings["budget"] = None
            bench_options = (BenchOptions.quick_run(**settings) if args.quick
                             else BenchOptions(**settings))  # type: ignore[arg-type]
            if args.scenarios is not None:
                bench_options = with_scenarios(bench_options, args.scenarios)
            return run_command(bench_options)
    except ConfigError as exc:
        print(f"clm-workers: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except PoolStartupError as exc:
        print(f"clm-workers: the pool could not start: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("clm-workers: interrupted; every worker was stopped", file=sys.stderr)
        return 130
    raise AssertionError(f"unhandled command {args.command!r}")


def _cli_number(flag: str, raw: str, kind: type, minimum: float, maximum: float):  # type: ignore[no-untyped-def]
    value: object
    try:
        value = kind(raw)
    except ValueError:
        value = raw
    return resolve_number(flag, value, env_var="", default=minimum, kind=kind,
                          minimum=minimum, maximum=maximum)


if __name__ == "__main__":
    sys.exit(main())
