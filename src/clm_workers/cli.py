"""The ``clm-workers`` command line: argument parsing and display only.

Only the standard library is imported at the top: ``--help`` and
``--version`` stay quick, and a Ctrl-C at any moment, even while the rest
is still being imported, ends in one line and exit code 130, never a
traceback.  Each subcommand imports what it needs once its input is parsed.
"""

from __future__ import annotations

import os
import sys

# Not ``typing.TYPE_CHECKING``: even typing is imported only once a Ctrl-C is handled.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from pathlib import Path
    from typing import Any

    from .errors import ConfigError

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def _choices(values: Sequence[str]) -> str:
    """argparse's own way of showing choices: ``{a,b}``."""
    return "{" + ",".join(values) + "}"


def _parser() -> argparse.ArgumentParser:
    import argparse
    from typing import NoReturn

    from . import __version__  # the package's __init__ is lazy: no trio here
    from .config import SLOT_MODES
    from .inventory import JOB_STATUSES
    from .settings_file import DEFAULT_CONFIG_NAME, LOG_LEVELS

    class _Parser(argparse.ArgumentParser):
        """argparse, but a usage error is one line (and exit code 2), like every other bad input."""

        def error(self, message: str) -> NoReturn:
            self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")

    parser = _Parser(
        prog="clm-workers",
        description="Start and supervise CLM worker pools in parallel, with nothing leaked.",
        epilog="Exit codes: 0 done; 1 the pool could not start (start), not everything could be "
               "stopped (stop), a job failed (submit --wait), no such log (logs); 2 bad input (nothing "
               "was started or written); 130 interrupted.  Docs: docs/configuration.md, "
               "docs/troubleshooting.md.",
    )
    parser.add_argument("--version", action="version", version=f"clm-workers {__version__}")
    log_help = ("clm-workers' own log on stderr: WARNING by default; ERROR for start and demo, whose "
                "display already shows every worker event (a level given here shows every record, "
                "those the display repeats included)")
    parser.add_argument("--log-level", default=None, type=str.upper, choices=LOG_LEVELS,
                        metavar=_choices(LOG_LEVELS), help=log_help)
    # The same flag after the subcommand (`clm-workers start --log-level INFO`); SUPPRESS
    # keeps the global one when it is not repeated there.
    common = _Parser(add_help=False)
    common.add_argument("--log-level", default=argparse.SUPPRESS, type=str.upper, choices=LOG_LEVELS,
                        metavar=_choices(LOG_LEVELS), help=log_help)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    start = commands.add_parser(
        "start", parents=[common], help="start the pools of a config file; live view until Ctrl-C",
        description="Start the pools of workers.toml in the foreground: live progress while they "
                    "register, then a live table of the workers until Ctrl-C (or SIGTERM, SIGHUP), then "
                    "stop every worker and exit 0.  Exit 1 when the pool could not start, 2 for bad input.  "
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
    start.add_argument("--slot-mode", metavar=_choices(SLOT_MODES), default=None,
                       help="spawn: the concurrency bounds the spawns; registration: a worker holds its "
                            "slot until it registered (file: startup.slot_mode; default spawn)")
    start.add_argument("--fail-fast", action=argparse.BooleanOptionalAction, default=None,
                       help="make the first failed worker fatal (file: startup.fail_fast)")
    start.add_argument("--json", action="store_true",
                       help="print the startup report as JSON on stdout once startup has finished")

    status = commands.add_parser(
        "status", parents=[common], help="the sessions, workers and recent events of a database",
        description="Show the sessions (running, stopping, stopped, or gone: the manager died), the "
                    "workers and the recent events of a jobs database.  Read-only.  " + _DATABASE_FROM,
    )
    _database_flags(status)
    status.add_argument("--all", action="store_true", help="include dead workers")
    status.add_argument("--events", metavar="N", default="10",
                        help="recent events to show, 0-1000 (default 10)")
    status.add_argument("--json", action="store_true", help="one JSON object on stdout, for scripts")

    jobs = commands.add_parser(
        "jobs", parents=[common], help="the recent jobs, and why one failed (jobs show ID)",
        description="List the recent jobs of a jobs database (oldest of them first): type, status, the "
                    "worker that took it, attempts, times and the first line of its error.  "
                    "`jobs show ID` prints one job whole, with its error and traceback.  Read-only.  "
                    + _DATABASE_FROM,
    )
    _database_flags(jobs)
    jobs.add_argument("--status", metavar=_choices(JOB_STATUSES), default=None,
                      help="only jobs with this status")
    jobs.add_argument("--type", metavar="TYPE", default=None, help="only jobs of this worker type")
    jobs.add_argument("--limit", metavar="N", default="20", help="how many jobs, 1-10000 (default 20)")
    jobs.add_argument("--json", action="store_true", help="a JSON list on stdout, for scripts")
    jobs_commands = jobs.add_subparsers(dest="jobs_command", required=False, metavar="show")
    show = jobs_commands.add_parser(
        "show", parents=[common], help="one job, with its whole error and traceback",
        description="One job of the database, every column, the whole error and traceback.",
    )
    show.add_argument("job_id", metavar="ID", help="the job's id (the first column of `jobs`)")
    _database_flags(show, suppress=True)
    show.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                      help="one JSON object on stdout")

    logs = commands.add_parser(
        "logs", parents=[common], help="a worker's log (or every worker's), -f to follow it",
        description="Print the log (stdout and stderr) of one worker, or of every worker of a session "
                    "with each line prefixed by its worker.  Direct workers' logs are files, kept "
                    "beside the database (<database>.logs/<session id>/) for the last 10 sessions, or "
                    "in log_dir when workers.toml sets one; a container's log is the Docker engine's, "
                    "there while the container is.  Exit 1 when there is no such log.  "
                    + _DATABASE_FROM,
    )
    logs.add_argument("worker", metavar="TYPE#INDEX", nargs="?", default=None,
                      help="the worker, e.g. notebook#0 (default: every worker of the session)")
    _database_flags(logs)
    logs.add_argument("--follow", "-f", action="store_true",
                      help="keep printing new lines (and replacements' logs) until the pool stops "
                           "or Ctrl-C")
    logs.add_argument("--tail", metavar="N", default=None,
                      help="only the last N lines of each log, 0-100000 (default: all)")
    logs.add_argument("--session", metavar="ID", default=None,
                      help="the session (its id or the first characters of it; default: the newest one "
                           "with workers)")
    logs.add_argument("--log-dir", metavar="DIR", default=None,
                      help="where the pool wrote its logs, if not beside the database "
                           "(default: the config file's log_dir)")

    submit = commands.add_parser(
        "submit", parents=[common], help="queue one job, for smoke tests and demos (CLM queues its own)",
        description="Queue one job the way CLM does, for scripted smoke tests of a pool: any pool's worker "
                    "of that type may take it.  With --wait, wait for its end: exit 0 when it completed, "
                    "1 when it failed or did not end in time.  " + _DATABASE_FROM,
    )
    submit.add_argument("job_type", metavar="TYPE", help="the worker type that runs it, e.g. notebook")
    submit.add_argument("input_file", metavar="INPUT",
                        help="the input file, as the workers see it (relative to their workspace)")
    submit.add_argument("output_file", metavar="OUTPUT", help="the output file, likewise")
    _database_flags(submit)
    submit.add_argument("--payload", metavar="JSON", default="{}",
                        help="the job's payload, a JSON object (default {}; the simulated worker reads "
                             "\"seconds\")")
    submit.add_argument("--priority", metavar="N", default="0",
                        help="higher runs first, -1000-1000 (default 0)")
    submit.add_argument("--wait", metavar="SECONDS", default=None,
                        help="wait up to this long for the job to end, 0.1-86400 (default: do not wait)")
    submit.add_argument("--json", action="store_true", help="the job as JSON on stdout")

    stop = commands.add_parser(
        "stop", parents=[common], help="stop pools that another process started",
        description="Stop the pools (sessions) of a database that another process started.  Their "
                    "manager is asked to stop: clm-workers start gets SIGTERM; any other manager (CLM) "
                    "gets SIGINT, which Python raises as KeyboardInterrupt, then SIGTERM at half of "
                    "--timeout.  A manager still running at --timeout gets SIGKILL.  Then what a dead or "
                    "killed manager left is cleaned up (leftover processes, containers, rows).  Exit 0 "
                    "when nothing of them runs any more (also when nothing ran), 1 when something could "
                    "not be stopped, 2 for bad input.  " + _DATABASE_FROM,
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
    demo.add_argument("--workers", metavar="N", default="16", help="how many workers, 1-1000 (default 16)")
    demo.add_argument("--boot-delay", metavar="SECONDS", default="1.0",
                      help="how long each simulated worker boots before registering, 0-60 (default 1.0)")
    demo.add_argument("--concurrency", metavar="N", default=None,
                      help="workers spawned at once, 1-1000 (default: $CLM_MAX_WORKER_STARTUP_CONCURRENCY "
                           "or 10)")
    bench = commands.add_parser(
        "bench", parents=[common], help="time every startup strategy side by side (writes docs/benchmarks.*)",
        description="Start simulated workers with CLM 0.3's sequential start, the proposal's thread "
                    "pool and both clm-workers slot modes, interleaved, for I/O- and CPU-bound boots; "
                    "print a markdown table and write docs/benchmarks.md, .json and .png.",
    )
    bench.add_argument("--quick", action="store_true",
                       help="smoke run: one small cell (N=4), one repeat, every strategy; writes "
                            "nothing unless --out is given")
    bench.add_argument("--sizes", metavar="N[,N...]", default=None,
                       help="pool sizes, each 1-1000 (default 8,16,32,64)")
    bench.add_argument("--scenarios", metavar="{io,cpu,clm}[,...]", default=None,
                       help="io: a 1 s sleep per boot; cpu: 0.2 s of CPU; clm: real CLM notebook workers, "
                            "CLM's own start against spawn and forkserver (default all; clm where CLM is "
                            "installed; alone, --sizes applies to it: default 4,8,16,24)")
    bench.add_argument("--repeats", metavar="N", default=None, help="repeats per cell, 1-50 (default 3)")
    bench.add_argument("--concurrency", metavar="N", default=None,
                       help="workers spawned at once, 1-1000 (default 10)")
    bench.add_argument("--out", metavar="DIR", default=None,
                       help="folder for benchmarks.md/.json/.png (default: docs; --quick: none)")
    bench.add_argument("--full-sequential", action="store_true",
                       help="run sequential every repeat even when the bench would take over 20 min")
    return parser


_DATABASE_FROM = "The database: --db, else $CLM_JOBS_DB_PATH, else the config file's."


def _database_flags(parser: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    import argparse

    from .settings_file import DEFAULT_CONFIG_NAME

    # In a nested command (`jobs show`) the defaults must not overwrite the parent's values.
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument("--db", metavar="PATH", default=default,
                        help="the jobs database (default: $CLM_JOBS_DB_PATH, else the config file's)")
    parser.add_argument("--config", "-c", metavar="FILE", default=default,
                        help=f"read the database (and log_dir) from this file, nothing else of it "
                             f"(default: ./{DEFAULT_CONFIG_NAME} if there is one)")


def main(argv: Sequence[str] | None = None) -> int:
    """The exit code of one command; a Ctrl-C at any moment is one line and exit code 130.

    Nothing is left running by then: ``start`` turns Ctrl-C into a clean stop
    from the moment its pool can exist, and the engine stops every worker
    before an interrupt leaves it.
    """
    try:
        return _main(argv)
    except KeyboardInterrupt:
        pass
    except BaseExceptionGroup as group:
        if group.subgroup(lambda exc: not isinstance(exc, KeyboardInterrupt | BaseExceptionGroup)):
            raise
    print("clm-workers: interrupted; nothing it started is left running", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    # Not a normal exit: an interrupt that hit an ``exec`` (a dataclass being defined) makes
    # CPython end the process by SIGINT at exit whatever was caught, and an interrupt inside
    # an import or a lock can leave the interpreter's shutdown waiting.  Nothing needs it.
    os._exit(EXIT_INTERRUPTED)


def _main(argv: Sequence[str] | None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    if given[:1] == ["clm"]:  # CLM parses its arguments and sets up its own logging
        from .commands.clm import run_clm

        return run_clm(given[1:])  # without building this parser: CLM's start is the build's
    args = _parser().parse_args(given)
    if args.command == "clm":  # `clm-workers --log-level INFO clm ...`
        from .commands.clm import run_clm

        return run_clm(args.args)
    from .display import configure_logging
    from .errors import ConfigError, PoolStartupError

    quiet_default = args.command in ("start", "demo")
    configure_logging(args.log_level or ("ERROR" if quiet_default else "WARNING"),
                      repeat_display=args.log_level is not None or not quiet_default)
    try:
        return _run(args, argv)
    except ConfigError as exc:
        print(f"clm-workers: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except PoolStartupError as exc:
        print(f"clm-workers: the pool could not start: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    if args.command == "start":
        return _start(args)
    if args.command == "status":
        from .commands.status import run_status

        db_path, setting = _database(args)
        return run_status(db_path, json_output=args.json, include_dead=args.all,
                          events=_cli_number("--events", args.events, int, 0, 1000), setting=setting)
    if args.command == "jobs":
        from .commands import jobs

        db_path, setting = _database(args)
        if args.jobs_command == "show":
            return jobs.run_show(db_path, _cli_number("ID", args.job_id, int, 1, 2**63 - 1),
                                 json_output=args.json, setting=setting)
        from .inventory import JOB_STATUSES

        status = args.status
        if status is not None and status not in JOB_STATUSES:
            raise _bad("--status", status, "one of " + ", ".join(repr(s) for s in JOB_STATUSES))
        return jobs.run_list(db_path, status=status, job_type=args.type,
                             limit=_cli_number("--limit", args.limit, int, 1, 10_000),
                             json_output=args.json, setting=setting)
    if args.command == "logs":
        return _logs(args)
    if args.command == "submit":
        return _submit(args)
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
        return _bench(args, argv)
    raise AssertionError(f"unhandled command {args.command!r}")


def _bad(setting: str, value: object, allowed: str) -> ConfigError:
    from .errors import ConfigError

    return ConfigError(setting, value, allowed)


def _config_path(args: argparse.Namespace) -> tuple[Path | None, str | None]:
    """The ``--config`` file, else ``./workers.toml`` if there is one."""
    from pathlib import Path

    from .settings_file import DEFAULT_CONFIG_NAME, default_config_path

    config = getattr(args, "config", None)
    if config is not None:
        return Path(config), config
    found = default_config_path()
    return (found, DEFAULT_CONFIG_NAME) if found is not None else (None, None)


def _start(args: argparse.Namespace) -> int:
    from .settings_file import DEFAULT_CONFIG_NAME, check_modules, load_settings, missing_setting

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
    from .settings_file import DEFAULT_CONFIG_NAME, missing_setting, resolve_database

    config, shown = _config_path(args)
    found = resolve_database(config, flag=getattr(args, "db", None), shown_as=shown)
    if found is None:
        raise missing_setting("--db", "the jobs database: pass --db PATH, set CLM_JOBS_DB_PATH, or run "
                                      f"where {DEFAULT_CONFIG_NAME} is")
    return found


def _logs(args: argparse.Namespace) -> int:
    from .commands.logs import LogRequest, run_logs
    from .settings_file import resolve_log_dir

    db_path, setting = _database(args)
    config, shown = _config_path(args)
    log_dir = resolve_log_dir(config, flag=args.log_dir, shown_as=shown)
    request = LogRequest(
        worker=args.worker, follow=args.follow, session_prefix=args.session, log_dir=log_dir,
        tail=None if args.tail is None else _cli_number("--tail", args.tail, int, 0, 100_000),
    )
    return run_logs(db_path, request, setting=setting)


def _submit(args: argparse.Namespace) -> int:
    import json

    from .commands.jobs import run_submit

    db_path, setting = _database(args)
    try:
        payload = json.loads(args.payload)
    except ValueError as exc:
        raise _bad("--payload", args.payload, f"a JSON object such as '{{\"seconds\": 1}}' ({exc})") from None
    if not isinstance(payload, dict):
        raise _bad("--payload", args.payload, "a JSON object such as '{\"seconds\": 1}'")
    from .config import check_worker_type

    check_worker_type("TYPE", args.job_type)
    for name, value in (("INPUT", args.input_file), ("OUTPUT", args.output_file)):
        if not value.strip():
            raise _bad(name, value, "a file path")
    return run_submit(
        db_path, args.job_type, args.input_file, args.output_file, payload,
        priority=_cli_number("--priority", args.priority, int, -1000, 1000),
        wait=None if args.wait is None else _cli_number("--wait", args.wait, float, 0.1, 86_400.0),
        json_output=args.json, setting=setting,
    )


def _stop(args: argparse.Namespace) -> int:
    import dataclasses
    import json

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


def _bench(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    import shlex

    from .bench.command import run_command
    from .bench.runner import BenchOptions, with_scenarios

    settings: dict[str, Any] = {
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
        from pathlib import Path

        settings["out"] = Path(args.out)
    if args.full_sequential:
        settings["budget"] = None
    options = BenchOptions.quick_run(**settings) if args.quick else BenchOptions(**settings)
    if args.scenarios is not None:
        options = with_scenarios(options, args.scenarios)
    return run_command(options)


def _cli_number(flag: str, raw: str, kind: type, minimum: float, maximum: float) -> Any:
    from .config import resolve_number

    value: object
    try:
        value = kind(raw)
    except ValueError:
        value = raw
    return resolve_number(flag, value, env_var="", default=minimum, kind=kind,
                          minimum=minimum, maximum=maximum)


if __name__ == "__main__":
    sys.exit(main())
