"""workers.toml: precedence (flags > environment > file > defaults) and bad input.

Bad input is answered with one line naming the setting, where it came from,
the value and what is allowed; exit code 2; nothing started (no database
file, no worker process).  Those cases run the real command; the precedence
rules are checked in-process on :func:`load_settings`.
"""

from __future__ import annotations

import re
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from clitools import SIM, clm_workers, sim_pools, write_config
from clm_workers import ConfigError
from clm_workers.settings_file import POOL_KEYS, SETTINGS, check_modules, load_settings, resolve_database

DOCS = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"

ONE_POOL = f"""
[[pools]]
type = "notebook"
count = 2
module = "{SIM}"
"""


# -- precedence ---------------------------------------------------------------------------


def test_flags_beat_environment_beat_file_beat_defaults(tmp_path):
    config = write_config(tmp_path, """
        [startup]
        concurrency = 3
        registration_timeout = 7
        [stop]
        grace = 2
    """ + ONE_POOL)
    env = {"CLM_MAX_WORKER_STARTUP_CONCURRENCY": "5", "CLM_WORKER_STOP_TIMEOUT": "4"}

    both = load_settings(config, environ=env, flags={"startup.concurrency": "9"})
    assert both.manager_options["max_startup_concurrency"] == 9          # flag
    assert both.manager_options["stop_timeout"] == 4.0                   # env over file
    assert both.manager_options["registration_timeout"] == 7.0           # file over default
    assert both.manager_options["poll_interval"] == 0.01                 # default
    assert both.sources["startup.concurrency"] == "flag --concurrency"
    assert both.sources["stop.grace"] == "env CLM_WORKER_STOP_TIMEOUT"
    assert both.sources["startup.registration_timeout"].endswith("workers.toml, line 4")

    no_flag = load_settings(config, environ=env, flags={"startup.concurrency": None})
    assert no_flag.manager_options["max_startup_concurrency"] == 5       # env over file
    file_only = load_settings(config, environ={})
    assert file_only.manager_options["max_startup_concurrency"] == 3
    assert file_only.manager_options["stop_timeout"] == 2.0
    defaults = load_settings(write_config(tmp_path, ONE_POOL, "bare.toml"), environ={})
    assert defaults.manager_options["max_startup_concurrency"] == 10
    assert defaults.manager_options["stop_timeout"] == 5.0
    assert defaults.monitor.interval == 1.0 and defaults.monitor.restart.flap_limit == 5


def test_an_empty_variable_counts_as_unset(tmp_path):
    config = write_config(tmp_path, "[startup]\nconcurrency = 3\n" + ONE_POOL)
    settings = load_settings(config, environ={"CLM_MAX_WORKER_STARTUP_CONCURRENCY": "  "})
    assert settings.manager_options["max_startup_concurrency"] == 3


def test_paths_in_the_file_are_relative_to_it_flags_to_the_current_folder(tmp_path):
    (tmp_path / "conf").mkdir()
    (tmp_path / "data").mkdir()
    config = write_config(tmp_path / "conf", 'database = "../data/jobs.db"\n' + ONE_POOL)
    settings = load_settings(config, environ={}, cwd=tmp_path / "data")
    assert settings.db_path.resolve() == (tmp_path / "data" / "jobs.db").resolve()
    assert settings.workspace_path.resolve() == (tmp_path / "conf").resolve()
    flagged = load_settings(config, environ={}, cwd=tmp_path / "data", flags={"database": "other.db"})
    assert flagged.db_path == tmp_path / "data" / "other.db"
    from_env = load_settings(config, environ={"CLM_JOBS_DB_PATH": "env.db"}, cwd=tmp_path)
    assert from_env.db_path == tmp_path / "env.db"


def test_the_file_makes_pools_monitor_and_manager_arguments(tmp_path):
    config = write_config(tmp_path, f"""
        database = "jobs.db"
        worker_log_level = "debug"
        lease_ttl = 20
        [startup]
        slot_mode = "registration"
        fail_fast = true
        [docker]
        network = "clm-net"
        [monitor]
        interval = 0.5
        heartbeat_timeout = 6
        hung_timeout = 12
        [monitor.restart]
        enabled = false
        flap_limit = 3
        [[pools]]
        type = "notebook"
        count = 4
        module = "{SIM}"
        env = {{ CLM_SIM_BOOT_DELAY = 0.5, NAME = "x" }}
        [[pools]]
        type = "notebook"
        count = 2
        mode = "docker"
        image = "clm-workers-sim:latest"
        memory = "512m"
        registration = "self"
    """)
    s = load_settings(config, environ={})
    first, second = s.worker_configs
    assert (first.worker_type, first.count, first.module, dict(first.env)) == (
        "notebook", 4, SIM, {"CLM_SIM_BOOT_DELAY": "0.5", "NAME": "x"})
    assert (second.execution_mode, second.image, second.memory_limit, second.registration) == (
        "docker", "clm-workers-sim:latest", "512m", "self")
    assert s.manager_options["slot_mode"] == "registration" and s.manager_options["fail_fast"] is True
    assert s.manager_options["log_level"] == "DEBUG" and s.manager_options["lease_ttl"] == 20.0
    assert s.manager_options["docker_network"] == "clm-net"
    assert (s.monitor.interval, s.monitor.heartbeat_timeout, s.monitor.hung_timeout) == (0.5, 6.0, 12.0)
    assert s.monitor.restart.enabled is False and s.monitor.restart.flap_limit == 3
    assert s.total_workers == 6


def test_status_and_stop_find_the_database_flag_env_then_file(tmp_path):
    config = write_config(tmp_path, 'database = "from-file.db"\n')
    assert resolve_database(config, flag="flag.db", environ={"CLM_JOBS_DB_PATH": "env.db"},
                            cwd=tmp_path) == (tmp_path / "flag.db", "--db")
    assert resolve_database(config, flag=None, environ={"CLM_JOBS_DB_PATH": "env.db"},
                            cwd=tmp_path)[0] == tmp_path / "env.db"
    assert resolve_database(config, flag=None, environ={})[0] == tmp_path.resolve() / "from-file.db"
    assert resolve_database(None, flag=None, environ={}) is None


def test_env_numbers_in_the_file_become_strings(tmp_path):
    settings = load_settings(write_config(tmp_path, ONE_POOL + "env = { CLM_SIM_BOOT_DELAY = 0.5, N = 3 }\n"),
                             environ={})
    assert dict(settings.worker_configs[0].env) == {"CLM_SIM_BOOT_DELAY": "0.5", "N": "3"}


def test_status_and_stop_read_only_the_database_of_the_file(tmp_path):
    # A typo elsewhere in the file must not keep anyone from looking at (or stopping) a pool.
    config = write_config(tmp_path, 'database = "mine.db"\nlog_dir = "logs"\n[startup]\nconcurency = 4\n'
                          + ONE_POOL.replace("count = 2", "cuont = 2"))
    assert resolve_database(config, flag=None, environ={}, shown_as="workers.toml") == (
        tmp_path.resolve() / "mine.db", "database (workers.toml, line 1)")
    from clm_workers.settings_file import resolve_log_dir

    assert resolve_log_dir(config, flag=None) == tmp_path.resolve() / "logs"
    result = clm_workers("status", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().startswith(f"clm-workers: error: database (workers.toml, line 1): "
                                            f"'{tmp_path.resolve() / 'mine.db'}' is not allowed; expected "
                                            "the path of an existing CLM jobs database")
    not_toml = write_config(tmp_path, "database = [\n", "broken.toml")
    with pytest.raises(ConfigError, match=r"broken\.toml.*: not valid TOML"):
        resolve_database(not_toml, flag=None, environ={}, shown_as="broken.toml")


def test_a_module_that_python_cannot_run_is_refused_before_anything_starts(tmp_path):
    runnable = load_settings(write_config(tmp_path, ONE_POOL), environ={})
    check_modules(runnable)  # clm_workers.sim is installed
    (tmp_path / "my_worker.py").write_text("print('hi')\n")  # in the workspace: `python -m` finds it
    check_modules(load_settings(write_config(tmp_path, ONE_POOL.replace(SIM, "my_worker"), "w.toml"),
                                environ={}))
    package = load_settings(write_config(tmp_path, ONE_POOL.replace(SIM, "clm_workers.commands"), "p.toml"),
                            environ={})
    with pytest.raises(ConfigError, match="'clm_workers.commands' is not allowed"):
        check_modules(package)  # a package without __main__
    default = load_settings(write_config(
        tmp_path, 'clm_profile = "0.3"\n[[pools]]\ntype = "notebook"\ncount = 1\n', "d.toml"), environ={})
    with pytest.raises(ConfigError, match="'nb' is not allowed.*the CLM default for its type"):
        check_modules(default)


def test_docs_table_lists_every_setting_with_its_variable():
    text = DOCS.read_text()
    for setting in SETTINGS:
        row = next((line for line in text.splitlines() if line.startswith(f"| `{setting.key}` ")), None)
        assert row is not None, f"docs/configuration.md has no row for {setting.key}"
        if setting.env:
            assert f"`{setting.env}`" in row, setting.key
        if setting.flag:
            assert f"`{setting.flag}`" in row, setting.key
    for key in POOL_KEYS:
        assert f"| `{key.key}` " in text, f"docs/configuration.md has no row for pools.{key.key}"


# -- bad input: the real command ------------------------------------------------------------


BAD_FILES = [
    pytest.param(
        ONE_POOL + 'start_method = "fork"\n',
        r"pools\[0\]\.start_method \(workers\.toml, line 6\): 'fork' is not allowed; "
        r"expected one of 'spawn', 'forkserver'", id="bad-start-method"),
    pytest.param(
        ONE_POOL + 'start_method = "forkserver"\npreload = "json"\n',
        r"pools\[0\]\.preload \(workers\.toml, line 7\): 'json' is not allowed; "
        r"expected a list of dotted Python module names", id="preload-not-a-list"),
    pytest.param(
        ONE_POOL.replace("count = 2", "count = -3"),
        r"pools\[0\]\.count \(workers\.toml, line 4\): -3 is not allowed; "
        r"expected a whole number from 0 to 1000", id="negative-count"),
    pytest.param(
        ONE_POOL + 'mode = "k8s"\n',
        r"pools\[0\]\.mode \(workers\.toml, line 6\): 'k8s' is not allowed; "
        r"expected one of 'direct', 'docker'",
        id="unknown-mode"),
    pytest.param(
        ONE_POOL + 'mode = "docker"\n',
        r"pools\[0\]\.image \(workers\.toml, line 2\): missing; "
        r"expected an image name .* when mode is 'docker'",
        id="docker-without-image"),
    pytest.param(
        "[startup]\nconcurrency = 0\n" + ONE_POOL,
        r"startup\.concurrency \(workers\.toml, line 2\): 0 is not allowed; "
        r"expected a whole number from 1 to 1000", id="concurrency-0"),
    pytest.param(
        '[startup]\nconcurrency = "abc"\n' + ONE_POOL,
        r"startup\.concurrency \(workers\.toml, line 2\): 'abc' is not allowed", id="concurrency-abc"),
    pytest.param(
        ONE_POOL.replace(SIM, "clm_workers.no_such_module"),
        r"pools\[0\]\.module \(workers\.toml, line 5\): 'clm_workers\.no_such_module' is not allowed; "
        r"expected a module that `python[0-9.]* -m` can run", id="unknown-module"),
    pytest.param(
        "[startup]\nconcurrency = 4\n[[pools]\ntype = 'notebook'\n",
        r"workers\.toml, line 3: not valid TOML: .*\(at line 3, column \d+\)", id="toml-syntax-error"),
    pytest.param(
        ONE_POOL + "cuont = 3\n",
        r"workers\.toml, line 6: unknown setting 'pools\[0\]\.cuont'; did you mean 'count'\? "
        r"\(allowed in \[\[pools\]\]: count, env, image, memory, mode, module, preload, registration, "
        r"start_method, "
        r"type\)",
        id="unknown-key"),
    pytest.param(
        "[startup]\nconcurency = 4\n" + ONE_POOL,
        r"workers\.toml, line 2: unknown setting 'startup\.concurency'; did you mean 'concurrency'\?",
        id="unknown-key-in-table"),
    pytest.param(
        "concurrency = 4\n" + ONE_POOL,
        r"workers\.toml, line 1: unknown setting 'concurrency'; did you mean 'startup\.concurrency'\?",
        id="key-in-the-wrong-table"),
    pytest.param(
        "[monitor]\nheartbeat_timeout = 20\nhung_timeout = 5\n" + ONE_POOL,
        r"monitor\.hung_timeout \(workers\.toml, line 3\): 5\.0 is not allowed; "
        r"expected at least monitor\.heartbeat_timeout \(20 s\)", id="hung-below-heartbeat"),
    pytest.param(
        "[startup]\nconcurrency = 4\n",
        r"pools \(workers\.toml\): missing; expected at least one \[\[pools\]\] table", id="no-pools"),
    pytest.param(
        ONE_POOL + 'mode = "docker"\nimage = "My Image:latest"\n',
        r"pools\[0\]\.image \(workers\.toml, line 7\): 'My Image:latest' is not allowed; "
        r"expected a Docker image reference such as 'clm-workers-sim:latest'", id="bad-image-reference"),
    pytest.param(
        ONE_POOL.replace('type = "notebook"', f'type = "{"n" * 65}"'),
        r"pools\[0\]\.type \(workers\.toml, line 3\): 'n{65}' is not allowed; "
        r"expected a name of up to 64 letters, digits", id="over-long-type"),
    pytest.param(
        ONE_POOL + 'mode = "docker"\nimage = "UPPER CASE!!"\n',
        r"pools\[0\]\.image \(workers\.toml, line 7\): 'UPPER CASE!!' is not allowed; "
        r"expected a Docker image reference", id="image-upper-case"),
    pytest.param(
        ONE_POOL.replace('type = "notebook"', f'type = "{"n" * 5000}"'),
        r"pools\[0\]\.type \(workers\.toml, line 3\): 'n{5000}' is not allowed; "
        r"expected a name of up to 64 letters, digits", id="type-of-5000-characters"),
    pytest.param(
        ONE_POOL + 'env = { CLM_SESSION_ID = "someone-elses" }\n',
        r"pools\[0\]\.env \(workers\.toml, line 6\): 'CLM_SESSION_ID' is not allowed; expected a variable "
        r"the manager does not set itself", id="env-reserved-session"),
    pytest.param(
        ONE_POOL + 'env = { DB_PATH = "/elsewhere/jobs.db" }\n',
        r"pools\[0\]\.env \(workers\.toml, line 6\): 'DB_PATH' is not allowed", id="env-reserved-db-path"),
    pytest.param(
        ONE_POOL + "env = { VERBOSE = true }\n",
        r"pools\[0\]\.env\.VERBOSE \(workers\.toml, line 6\): True is not allowed; "
        r"expected a string, or a number \(converted to a string\)", id="env-bool"),
]


def assert_refused(result, pattern: str, folder: Path) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("clm-workers: error: "), lines[0]
    assert re.search(pattern, lines[0]), f"{pattern!r} not in {lines[0]!r}"
    assert result.stdout == ""
    assert not list(folder.rglob("*.db")), "a database was created"
    assert "starting" not in result.stderr


@pytest.mark.parametrize(("body", "pattern"), BAD_FILES)
def test_bad_config_file_one_line_exit_2_nothing_started(tmp_path, body, pattern):
    write_config(tmp_path, body)
    result = clm_workers("start", "--config", "workers.toml", cwd=tmp_path)
    assert_refused(result, pattern, tmp_path)


@pytest.mark.parametrize(
    ("args", "env", "pattern"),
    [
        (["--concurrency", "0"], {},
         r"--concurrency: 0 is not allowed; expected a whole number from 1 to 1000"),
        (["--concurrency", "abc"], {}, r"--concurrency: 'abc' is not allowed"),
        ([], {"CLM_MAX_WORKER_STARTUP_CONCURRENCY": "abc"},
         r"startup\.concurrency \(env CLM_MAX_WORKER_STARTUP_CONCURRENCY\): 'abc' is not allowed; "
         r"expected a whole number from 1 to 1000"),
        ([], {"CLM_MAX_WORKER_STARTUP_CONCURRENCY": "0"},
         r"startup\.concurrency \(env CLM_MAX_WORKER_STARTUP_CONCURRENCY\): 0 is not allowed"),
        (["--slot-mode", "eager"], {}, r"--slot-mode: 'eager' is not allowed; expected one of 'spawn'"),
        (["--registration-timeout", "-1"], {}, r"--registration-timeout: -1\.0 is not allowed"),
        (["--workspace", "no-such-folder"], {}, r"--workspace: '.*no-such-folder' is not allowed; "
                                               r"expected an existing folder"),
        (["--bogus"], {}, r"clm-workers: error: unrecognized arguments: --bogus"),
        (["--log-level", "loud"], {}, r"argument --log-level: invalid choice: 'LOUD'"),
    ],
)
def test_bad_flag_or_variable_one_line_exit_2(tmp_path, args, env, pattern):
    write_config(tmp_path, ONE_POOL)
    result = clm_workers("start", "--config", "workers.toml", *args, cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert re.search(pattern, line), line
    assert not list(tmp_path.rglob("*.db"))


def test_database_under_a_regular_file_is_refused(tmp_path):
    # Tests run as root, for whom chmod does not make a folder unwritable; a path
    # whose "folder" is a regular file can never be created, whoever runs it.
    (tmp_path / "afile").write_text("not a folder\n")
    write_config(tmp_path, 'database = "afile/jobs.db"\n' + ONE_POOL)
    result = clm_workers("start", cwd=tmp_path)  # ./workers.toml is found without --config
    assert_refused(
        result,
        r"database \(workers\.toml, line 1\): '.*/afile/jobs\.db' is not allowed; expected a file in an "
        r"existing, writable folder \(.*/afile is not a folder\)", tmp_path)


def test_database_in_a_missing_folder_is_refused(tmp_path):
    write_config(tmp_path, ONE_POOL)
    result = clm_workers("start", "--db", "nowhere/jobs.db", cwd=tmp_path)
    assert_refused(result, r"--db: '.*nowhere/jobs\.db' is not allowed; expected a file in an existing, "
                           r"writable folder \(.*nowhere does not exist\)", tmp_path)


def _another_applications_sqlite(path: Path) -> None:
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
        conn.execute("INSERT INTO notes VALUES ('mine')")
        conn.commit()


@pytest.mark.parametrize(("make", "why"), [
    (_another_applications_sqlite, r"it has no jobs, schema_version, workers table \(tables: notes\)"),
    (lambda path: path.write_text("my diary\n"), "it is not a SQLite database"),
], ids=["another application's SQLite file", "not a SQLite file"])
def test_a_database_that_is_not_clm_s_is_refused_and_left_as_it_was(tmp_path, make, why):
    target = tmp_path / "data" / "notes.db"
    target.parent.mkdir()
    make(target)
    before = target.read_bytes()
    write_config(tmp_path, 'database = "data/notes.db"\n' + ONE_POOL)
    result = clm_workers("start", cwd=tmp_path)
    assert result.returncode == 2, (result.returncode, result.stderr)
    [line] = result.stderr.strip().splitlines()
    assert re.fullmatch(r"clm-workers: error: database \(workers\.toml, line 1\): '.*/data/notes\.db' is not "
                        rf"allowed; expected a CLM jobs database or a new file: {why}; it was left unchanged",
                        line), line
    assert target.read_bytes() == before  # no table added, no WAL mode
    assert sorted(p.name for p in target.parent.iterdir()) == ["notes.db"]  # no -wal, -shm, logs


def test_no_config_file_says_how_to_give_one(tmp_path):
    result = clm_workers("start", cwd=tmp_path)
    assert_refused(result, r"--config: missing; expected a TOML file describing the pools", tmp_path)
    missing = clm_workers("start", "--config", "nope.toml", cwd=tmp_path)
    assert_refused(missing, r"--config: 'nope\.toml' is not allowed; expected an existing TOML file",
                   tmp_path)


def test_demo_and_bench_flags_are_unchanged(tmp_path):
    result = clm_workers("demo", "--workers", "0", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "clm-workers: error: --workers: 0 is not allowed; expected a whole number from 1 to 1000")
    bench = clm_workers("bench", "--repeats", "0", cwd=tmp_path)
    assert bench.returncode == 2 and "--repeats: 0 is not allowed" in bench.stderr


def test_sim_pools_helper_is_a_valid_config(tmp_path):
    settings = load_settings(write_config(tmp_path, sim_pools(2, 1)), environ={})
    check_modules(settings)
    assert settings.total_workers == 3


@pytest.mark.parametrize("doc", ["README.md", "docs/configuration.md"])
def test_every_toml_example_in_the_docs_loads(tmp_path, doc):
    text = (DOCS.parents[1] / doc).read_text()
    examples = re.findall(r"```toml\n(.*?)```", text, re.DOTALL)
    assert examples, f"{doc} has no TOML example"
    for n, example in enumerate(examples):
        settings = load_settings(write_config(tmp_path, example, f"example{n}.toml"), environ={})
        check_modules(settings)
        assert settings.total_workers > 0
