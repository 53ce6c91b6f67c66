"""The ``clm-workers`` command line: argument parsing and display only."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from .config import resolve_number
from .errors import ConfigError, PoolStartupError
from .settings_file import (
    DEFAULT_CONFIG_NAME,
    LOG_LEVELS,
    check_modules,
    default_config_path,
    load_settings,
    missing_setting,
    resolve_database,
)

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit code 2), like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="clm-workers",
        description="Start and supervise CLM worker pools in parallel, with nothing leaked.",
        epilog="Exit codes: 0 done; 1 the pool could not start (start) or not everything could be "
               "stopped (stop); 2 bad input (nothing was started); 130 interrupted.  "
               "Docs: docs/configuration.md, docs/troubleshooting.md.",
    )
    parser.add_argument("--log-level", default=None, type=str.upper, choices=LOG_LEVELS,
                        help="logging level of clm-workers itself (default: WARNING; for start ERROR, "
                             "as its display shows every worker event)")
    # The same flag after the subcommand (`clm-workers start --log-level INFO`); SUPPRESS
    # keeps the global one when it is not repeated there.
    common = _Parser(add_help=False)
    common.add_argument("--log-level", default=argparse.SUPPRESS, type=str.upper, choices=LOG_LEVELS,
                        help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    start = commands.add_parser(
        "start", parents=[common], help="start the pools of a config file; live view until Ctrl-C",
        description="Start the pools of workers.toml in the foreground: live progress while they "
                    "register, then a live table of the workers until Ctrl-C (or SIGTERM), then stop "
                    "every worker and exit 0.  Exit 1 when the pool could not start, 2 for bad input.  "
                    "Settings: flags > environment (CLM_*) > file > defaults (docs/configuration.md).",
    )
    start.add_argument("--config", "-c", metavar="FILE", default=None,
                       help=f"the TOML file (default: ./{DEFAULT_CONFIG_NAME})")
    start.add_argument("--db", metavar="PATH", default=None,
                       help="the jobs database (file: database; env CLM_JOBS_DB_PATH)")
    start.add_argument("--workspace", metavar="DIR", default=None,
                       help="the workers' folder (file: workspace)")
    start.add_argument("--concurrency", metavar="N", default=None,
                       help="workers spawned at once, 1-1000 (file: startup.concurrency; "
                            "env CLM_MAX_WORKER_STARTUP_CONCURRENCY; default 10)")
    start.add_argument("--registration-timeout", metavar="SECONDS", default=None,
                       help="0.1-3600 (file: startup.registration_timeout; "
                            "env CLM_WORKER_REGISTRATION_TIMEOUT; default 10)")
    start.add_argument("--stop-grace", metavar="SECONDS", default=None,
                       help="SIGTERM-to-SIGKILL grace, 0-600 (file: stop.grace; env CLM_WORKER_STOP_TIMEOUT; "
                            "default 5)")
    start.add_argument("--slot-mode", default=None,
                       help="spawn or registration (file: startup.slot_mode; default spawn)")
    start.add_argument("--fail-fast", action=argparse.BooleanOptionalAction, default=None,
                       help="make the first failed worker fatal (file: startup.fail_fast)")
    start.add_argument("--json", action="store_true",
                       help="print the startup report as JSON on stdout once startup has finished")

    status = commands.add_parser(
        "status", parents=[common], help="the workers and recent events of a database",
        description="Show the sessions, workers and recent events of a jobs database (read-only).  "
                    "The database: --db, else $CLM_JOBS_DB_PATH, else the config file's.",
    )
    _database_flags(status)
    status.add_argument("--all", action="store_true", help="include dead workers")
    status.add_argument("--events", metavar="N", default="10",
                        help="recent events to show, 0-1000 (default 10)")
    status.add_argument("--json", action="store_true", help="one JSON object on stdout, for scripts")

    stop = commands.add_parser(
        "stop", parents=[common], help="stop pools that another process started",
        description="Stop the pools (sessions) of a database that another process started: ask their "
                    "manager to stop (SIGTERM, or SIGINT for a manager that is not clm-workers start), "
                    "wait, and clean up what a dead or stuck manager left (leftover processes, containers, "
                    "rows).  Exit 0 when nothing of them runs any more (also when nothing ran), 1 when "
                    "something could not be stopped, 2 for bad input.",
    )
    _database_flags(stop)
    stop.add_argument("--session", metavar="ID", default=None,
                      help="only this session (its id or the first characters of it)")
    stop.add_argument("--timeout", metavar="SECONDS", default="30",
                      help="how long a manager gets to stop its workers before it is killed, 1-3600 "
                           "(default 30)")
    stop.add_argument("--json", action="store_true", help="what was done, as JSON on stdout")

    clm = commands.add_parser(
        "clm", add_help=False, help="CLM's own command line on clm-workers pools: clm-workers clm build FILE",
        description="Run CLM's `clm` with these arguments, in this process, with clm-workers' pool "
                    "manager in place of CLM's (docs/clm-integration.md).")
    clm.add_argument("args", nargs=argparse.REMAINDER, help="CLM's arguments")

    demo = commands.add_parser(
        "demo", parents=[common],
        help="start simulated workers on a throw-away database, run jobs, stop",
        description="Start simulated workers across the notebook, plantuml and drawio types on a "
                    "temporary database, run a few jobs through them, stop everything.",
    )
    demo.add_argument("--workers", default="16", help="how many workers (1-1000, default 16)")
    demo.add_argument("--boot-delay", default="1.0",
                      help="seconds each simulated worker boots before registering (0-60, default 1.0)")
    demo.add_argument("--concurrency", default=None,
                      help="startup concurrency (1-1000; default: $CLM_MAX_WORKER_STARTUP_CONCURRENCY or 10)")
    bench = commands.add_parser(
        "bench", parents=[common], help="time every startup strategy side by side (writes docs/benchmarks.*)",
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


def _database_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", metavar="PATH", default=None,
                        help="the jobs database (default: $CLM_JOBS_DB_PATH, else the config file's)")
    parser.add_argument("--config", "-c", metavar="FILE", default=None,
                        help=f"read the database path from this file (default: ./{DEFAULT_CONFIG_NAME} "
                             "if there is one)")


def main(argv: Sequence[str] | None = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(given[:1] if given[:1] == ["clm"] else given)
    if args.command == "clm":  # CLM parses its arguments and sets up its own logging
        from .commands.clm import run_clm

        return run_clm(given[1:] if given[:1] == ["clm"] else args.args)
    from .display import configure_logging

    configure_logging(args.log_level or ("ERROR" if args.command == "start" else "WARNING"))
    try:
        if args.command == "start":
            return _start(args)
        if args.command == "status":
            from .commands.status import run_status

            db_path, setting = _database(args)
            return run_status(db_path, json_output=args.json, include_dead=args.all,
                              events=_cli_number("--events", args.events, int, 0, 1000), setting=setting)
        if args.command == "stop":
            return _stop(args)
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


def _config_path(args: argparse.Namespace) -> tuple[Path | None, str | None]:
    """The ``--config`` file, else ``./workers.toml`` if there is one."""
    if args.config is not None:
        return Path(args.config), args.config
    found = default_config_path()
    return (found, DEFAULT_CONFIG_NAME) if found is not None else (None, None)


def _start(args: argparse.Namespace) -> int:
    config, shown = _config_path(args)
    if config is None:
        raise missing_setting("--config", f"a TOML file describing the pools: pass --config FILE, or run "
                                          f"where {DEFAULT_CONFIG_NAME} is (docs/configuration.md)")
    settings = load_settings(config, shown_as=shown, flags={
        "database": args.db,
        "workspace": args.workspace,
        "startup.concurrency": args.concurrency,
        "startup.registration_timeout": args.registration_timeout,
        "stop.grace": args.stop_grace,
        "startup.slot_mode": args.slot_mode,
        "startup.fail_fast": args.fail_fast,
    })
    check_modules(settings)
    from .commands.start import run_start  # trio and the engine only once the input is good

    return run_start(settings, json_output=args.json)


def _database(args: argparse.Namespace) -> tuple[Path, str]:
    config, shown = _config_path(args)
    found = resolve_database(config, flag=args.db, shown_as=shown)
    if found is None:
        raise missing_setting("--db", "the jobs database: pass --db PATH, set CLM_JOBS_DB_PATH, or run "
                                      f"where {DEFAULT_CONFIG_NAME} is")
    return found


def _stop(args: argparse.Namespace) -> int:
    from .commands.stop import EXIT_NOT_ALL_STOPPED, EXIT_STOPPED, stop_database

    db_path, setting = _database(args)
    timeout = _cli_number("--timeout", args.timeout, float, 1.0, 3600.0)
    results = stop_database(db_path, session_prefix=args.session, timeout=timeout, setting=setting,
                            report=lambda line: print(line, file=sys.stderr, flush=True))
    if not results:
        print(f"clm-workers: nothing to stop: no session of {db_path} runs or claims workers",
              file=sys.stderr)
    ok = all(r.ok for r in results)
    if args.json:
        print(json.dumps({"database": str(db_path), "ok": ok,
                          "sessions": [dataclasses.asdict(r) for r in results]}, indent=2), flush=True)
    return EXIT_STOPPED if ok else EXIT_NOT_ALL_STOPPED


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
