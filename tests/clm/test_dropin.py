"""``clm build`` on clm-workers: ``clm-workers clm build`` against plain ``clm build``, on a course made here.

Every build is CLM's own command line in a process of its own (its own
folder, databases and ``clm.log``), run on the same course: the outputs of
the two must be the same files with the same content (sha256 of each file,
and the content hashes CLM writes into its manifests), and neither may leave
a worker behind.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import pytest
from clmbuild import (
    CliBuild,
    drop_in_command,
    manifest_hashes,
    output_hashes,
    plain_command,
    rows,
    run_cli_build,
    write_spec,
)
from clmtools import Course, clm_version, notebook_source

from clitools import StartProcess, session_of, wait_registered, write_config
from clm_workers import ConfigError
from clm_workers.clm import dropin
from clm_workers.clm.ownership import running_session_sql
from procs import environment_processes, wait_until

#: The long deck's code cell runs this long (the monitor must not take its silence for a hang).
LONG_CELL_SECONDS = 40

#: Replaces CLM's module for PlantUML workers, in the build's own process only, by one that cannot boot.
BROKEN_PLANTUML = (
    "from clm.infrastructure.workers.worker_executor import DirectWorkerExecutor\n"
    "DirectWorkerExecutor.MODULE_MAP['plantuml'] = 'broken_plantuml'"
)


def clm_1_35() -> bool:
    return (clm_version() or (0,)) >= (1, 35)


def add_long_deck(course: Course) -> Path:
    """A second deck, titled apart from the first, whose one code cell runs ``LONG_CELL_SECONDS``."""
    deck = course.notebook.with_name("slides_long.py")
    source = notebook_source(cell_seconds=LONG_CELL_SECONDS).replace('header("Hello", "Hallo")',
                                                                     'header("Lang", "Long")')
    deck.write_text(source, encoding="utf-8")
    return deck


def workers_of(db: Path) -> list[int]:
    """Processes whose environment names this jobs database: the build's workers and their kernels."""
    return environment_processes(f"DB_PATH={db}", f"CLM_JOBS_DB_PATH={db}")


def assert_nothing_left(build: CliBuild) -> None:
    wait_until(lambda: not workers_of(build.db), 15, f"the workers of {build.db} to be gone")
    live = rows(build.db, "SELECT id, worker_type, status FROM workers"
                          " WHERE status IN ('created', 'idle', 'busy', 'hung')")
    assert live == [], live


def assert_succeeded(build: CliBuild) -> None:
    assert build.returncode == 0, build.describe()
    summary = build.summary
    assert (summary["status"], summary["error_count"], summary["files_failed"]) == ("success", 0, 0), summary


def completed_pages(output: Path) -> dict[str, str]:
    """The completed HTML of each deck (its code cells executed), by file name."""
    return {path.name: path.read_text(encoding="utf-8") for path in output.rglob("*.html")
            if "Completed" in path.parts}


def test_clm_workers_clm_build_writes_what_clm_build_writes(course: Course, tmp_path: Path):
    add_long_deck(course)
    spec = write_spec(course)
    plain = run_cli_build(plain_command(), spec, tmp_path / "plain")
    assert_succeeded(plain)
    assert_nothing_left(plain)
    ours = run_cli_build(drop_in_command(), spec, tmp_path / "clm-workers")
    assert_succeeded(ours)
    assert_nothing_left(ours)
    print(f"whole build: clm build {plain.seconds:.1f} s, clm-workers clm build {ours.seconds:.1f} s")

    expected = output_hashes(plain.output)
    assert any(name.endswith(".html") for name in expected), expected
    assert any(name.endswith(".png") for name in expected), expected
    assert output_hashes(ours.output) == expected
    assert manifest_hashes(ours.output) == manifest_hashes(plain.output) != {}
    # Both decks' cells ran (the long one for its whole 40 s, under the monitor).
    pages = completed_pages(ours.output)
    assert any("Long" in name for name in pages) and any("Hallo" in name for name in pages), sorted(pages)
    assert all("answer: 42" in text for text in pages.values()), sorted(pages)
    assert ours.seconds > LONG_CELL_SECONDS

    # The pool was clm-workers' (its every step in CLM's log), in the build's own session.
    assert "✓ Started notebook-0" in ours.log and "✓ Started plantuml-0" in ours.log, ours.log[-3000:]
    assert "clm_workers.clm.dropin" not in plain.log
    ours_sessions = {r[0] for r in rows(ours.db, "SELECT session_id FROM worker_events"
                                                 " WHERE event_type = 'worker_starting'")}
    assert len(ours_sessions) == 1, ours_sessions
    if clm_1_35():  # the build's jobs carry its session: the same one
        assert {r[0] for r in rows(ours.db, "SELECT DISTINCT session_id FROM jobs")} == ours_sessions


def test_a_worker_that_cannot_boot_fails_the_build_as_in_clm_and_leaves_nothing(
    course: Course, tmp_path: Path
):
    spec = write_spec(course)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "broken_plantuml.py").write_text("import clm_workers_no_such_dependency  # not installed\n")
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(broken), os.environ.get("PYTHONPATH")]))}

    plain = run_cli_build(plain_command(BROKEN_PLANTUML), spec, tmp_path / "plain", env=env)
    ours = run_cli_build(drop_in_command(BROKEN_PLANTUML), spec, tmp_path / "clm-workers", env=env)
    print(f"a broken PlantUML worker: clm build exits {plain.returncode} after {plain.seconds:.1f} s, "
          f"clm-workers clm build {ours.returncode} after {ours.seconds:.1f} s")
    assert plain.returncode != 0, plain.describe()
    assert ours.returncode == plain.returncode, ours.describe()
    # CLM's own words for a type without workers, from both.
    no_workers = ("No live plantuml workers can claim this build's jobs" if clm_1_35()
                  else "No workers available to process 'plantuml' jobs")
    for build in (plain, ours):
        assert no_workers in build.stderr + build.stdout, build.describe()
        assert_nothing_left(build)
    # CLM's log says which worker failed, in which phase and why, as it happened.
    assert "✗ Failed to start plantuml-0 (exit)" in ours.log, ours.log[-3000:]
    assert "No module named 'clm_workers_no_such_dependency'" in ours.log
    assert "✓ Started notebook-0" in ours.log


def test_clm_build_uses_a_running_clm_workers_start_pool(course: Course, tmp_path: Path):
    spec = write_spec(course)
    pool = tmp_path / "pool"
    pool.mkdir()
    db = pool / "jobs.db"
    write_config(pool, """
        database = "jobs.db"
        serve_builds = true

        [[pools]]
        type = "notebook"
        count = 1

        [[pools]]
        type = "plantuml"
        count = 1
    """)
    start = StartProcess(pool, env={"PLANTUML_JAR": os.environ["PLANTUML_JAR"]})
    try:
        wait_registered(db, 2, timeout=120)
        session = session_of(db)
        pool_rows = {r[0] for r in rows(db, "SELECT id FROM workers")}

        build = run_cli_build(plain_command(), spec, tmp_path / "build", db=db)
        assert_succeeded(build)
        # CLM started no worker of its own: it reused the pool's, which did every job.
        assert "Sufficient healthy workers already running" in build.log, build.log[-3000:]
        assert {r[0] for r in rows(db, "SELECT id FROM workers")} == pool_rows
        done_by = {r[0] for r in rows(db, "SELECT DISTINCT worker_id FROM jobs WHERE status = 'completed'")}
        assert done_by and done_by <= pool_rows, (done_by, pool_rows)
        assert {r[0] for r in rows(db, f"SELECT {running_session_sql()} FROM workers")} == {session}
        assert any("answer: 42" in text for text in completed_pages(build.output).values())
        assert sorted(r[0] for r in rows(db, "SELECT status FROM workers")) == ["idle", "idle"]
    finally:
        start.popen.send_signal(signal.SIGINT)
        assert start.wait(60) == 0, start.stderr
    wait_until(lambda: not workers_of(db), 15, "the pool's workers to be gone")


# -- the adapter, without starting anything -----------------------------------------------


def clm_worker_config(worker_type: str, count: int, **options: object) -> object:
    from clm.infrastructure.workers.worker_executor import WorkerConfig

    return WorkerConfig(worker_type=worker_type, count=count, execution_mode=options.pop("mode", "direct"),
                        **options)


def test_the_drop_in_takes_what_clm_1_35_passes_and_starts_nothing_until_asked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="clm_workers")
    manager = dropin.ClmPoolManager(
        db_path=tmp_path / "jobs.db", workspace_path=tmp_path / "out" / "not-yet",
        worker_configs=[clm_worker_config("notebook", 2, max_job_time=900), clm_worker_config("drawio", 0)],
        network_name=None, log_level="DEBUG", max_startup_concurrency=4, cache_db_path=tmp_path / "cache.db",
        data_dir=tmp_path, notebook_kernel_python="", session_id="session-20261202-093000",
        workers_shareable=False, a_later_option=1,
    )
    assert manager.session_id == "session-20261202-093000"
    assert manager.workers == {"notebook": []} and not manager.running
    assert manager.executors["direct"].is_worker_running("direct-notebook-0-0123abcd") is False
    assert manager.monitor_settings.max_job_time == 900
    assert (tmp_path / "out" / "not-yet").is_dir()  # the workers' folder, before CLM makes it
    assert not (tmp_path / "jobs.db").exists()
    assert "a_later_option" in caplog.text
    manager.start_monitoring(10)
    manager.stop_pools()
    manager.close()


def test_a_session_id_that_cannot_name_a_session_is_refused_before_anything(tmp_path: Path):
    with pytest.raises(ConfigError, match="session_id: 'two words' is not allowed"):
        dropin.ClmPoolManager(tmp_path / "jobs.db", tmp_path, [clm_worker_config("notebook", 1)],
                              session_id="two words")
    assert list(tmp_path.iterdir()) == []


def test_install_puts_the_drop_in_in_place_of_clms_class_and_uninstall_gives_it_back(tmp_path: Path):
    from clm.infrastructure.workers import lifecycle_manager, pool_manager

    own = lifecycle_manager.WorkerPoolManager
    assert own is pool_manager.WorkerPoolManager
    try:
        dropin.install()
        dropin.install()
        assert lifecycle_manager.WorkerPoolManager is dropin.pool_manager
        made = lifecycle_manager.WorkerPoolManager(
            db_path=tmp_path / "jobs.db", workspace_path=tmp_path,
            worker_configs=[clm_worker_config("notebook", 1)])
        assert isinstance(made, dropin.ClmPoolManager)
        # Docker workers: CLM's own pool manager, with its own Docker setup.
        docker = lifecycle_manager.WorkerPoolManager(
            db_path=tmp_path / "jobs.db", workspace_path=tmp_path,
            worker_configs=[clm_worker_config("notebook", 1, mode="docker", image="clm-notebook:latest")])
        assert isinstance(docker, own)
        docker.close()
    finally:
        dropin.uninstall()
    assert lifecycle_manager.WorkerPoolManager is own


def test_clm_workers_clm_is_clms_command_line(tmp_path: Path):
    import subprocess

    done = subprocess.run([*drop_in_command(), "--version"], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"clm, version {'.'.join(map(str, clm_version() or ()))}", done.stdout
