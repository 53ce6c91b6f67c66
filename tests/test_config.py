"""Bad input is refused at construction with a message naming setting and allowed values."""

from __future__ import annotations

import importlib.util

import pytest

from clm_workers import ConfigError, WorkerConfig, WorkerPoolManager
from clm_workers.clm.installed import installed_clm
from clm_workers.clm.profile import _installed, fork_server_types, resolve_configs

SIM = "clm_workers.sim"


@pytest.mark.parametrize(
    ("kwargs", "setting", "allowed"),
    [
        ({"count": -1}, "count (worker 'notebook')", "a whole number from 0 to 1000"),
        ({"count": 2.5}, "count (worker 'notebook')", "a whole number"),
        ({"count": True}, "count (worker 'notebook')", "a whole number"),
        ({"execution_mode": "k8s"}, "execution_mode (worker 'notebook')", "one of 'direct', 'docker'"),
        ({"execution_mode": "docker"}, "image (worker 'notebook')", "when execution_mode is 'docker'"),
        ({"module": "not a module"}, "module (worker 'notebook')", "a dotted Python module name"),
        ({"module": "pkg..mod"}, "module (worker 'notebook')", "a dotted Python module name"),
        ({"module": "1pkg.mod"}, "module (worker 'notebook')", "a dotted Python module name"),
        ({"registration": "maybe"}, "registration (worker 'notebook')", "one of 'pre', 'self'"),
        ({"memory_limit": "lots"}, "memory_limit (worker 'notebook')", "'512m' or '1g'"),
        ({"env": {"BAD-NAME": "x"}}, "env (worker 'notebook')", "variable names"),
        ({"env": {"N": 3}}, "env[N] (worker 'notebook')", "a string value"),
        ({"start_method": "fork"}, "start_method (worker 'notebook')", "one of 'spawn', 'forkserver'"),
        ({"start_method": "forkserver", "execution_mode": "docker", "image": "i"},
         "start_method (worker 'notebook')", "'spawn' when execution_mode is 'docker'"),
        ({"preload": "clm.workers"}, "preload (worker 'notebook')", "a list of dotted Python module names"),
        ({"preload": ["ok", "not ok"]}, "preload (worker 'notebook')",
         "a list of dotted Python module names"),
    ],
)
def test_worker_config_rejects(kwargs, setting, allowed):
    with pytest.raises(ConfigError) as info:
        WorkerConfig(**{"worker_type": "notebook", "count": 1, **kwargs})
    assert info.value.setting == setting
    assert allowed in str(info.value)
    assert str(info.value).startswith(f"{setting}: ")


def test_a_fork_server_preloads_clm_s_worker_module_for_clm_s_types_and_nothing_for_others():
    notebook, plantuml, sim, spawned, explicit = resolve_configs([
        WorkerConfig("notebook", 1, start_method="forkserver"),
        WorkerConfig("plantuml", 1, start_method="forkserver"),
        WorkerConfig("notebook", 1, start_method="forkserver", module=SIM),
        WorkerConfig("drawio", 1),
        WorkerConfig("drawio", 1, start_method="forkserver", preload=["json", "sqlite3"]),
    ], "1.x")
    # Also what a notebook worker imports in its first job, where installed.
    lexers = ("IPython.lib.lexers",) if importlib.util.find_spec("IPython") else ()
    assert notebook.preload == ("clm.workers.notebook.notebook_worker", *lexers)
    assert plantuml.preload == ("clm.workers.plantuml.plantuml_worker",)
    assert sim.preload == () and spawned.preload == ()
    assert explicit.preload == ("json", "sqlite3")
    [old] = resolve_configs([WorkerConfig("notebook", 1, start_method="forkserver")], "0.3")
    assert old.preload == ()
    assert fork_server_types("1.x") == {"notebook", "plantuml", "drawio", "jupyterlite"}
    assert fork_server_types("0.3") == frozenset()


def test_a_job_preload_whose_package_is_not_installed_is_left_out():
    assert _installed(["json.decoder", "no_such_package_here.x", "sqlite3"]) == ("json.decoder", "sqlite3")


def test_an_unknown_type_needs_a_module():
    with pytest.raises(ConfigError, match="CLM 1.x has no 'custom' worker") as info:
        resolve_configs([WorkerConfig("custom", 1)], "1.x")
    assert info.value.setting == "module (worker 'custom')"
    [config] = resolve_configs([WorkerConfig("custom", 1, module="my.worker")], "1.x")
    assert (config.module, config.registration) == ("my.worker", "pre")


@pytest.mark.parametrize(
    ("profile", "modules", "registration"),
    [
        ("0.3", {"notebook": "nb", "drawio": "drawio_converter", "plantuml": "plantuml_converter"}, "self"),
        ("1.x", {"notebook": "clm.workers.notebook", "drawio": "clm.workers.drawio",
                 "plantuml": "clm.workers.plantuml"}, "pre"),
    ],
)
def test_a_clm_profile_names_each_types_module_and_protocol(profile, modules, registration):
    configs = resolve_configs([WorkerConfig(t, 1) for t in modules], profile)
    assert {c.worker_type: c.module for c in configs} == modules
    assert {c.registration for c in configs} == {registration}
    explicit = resolve_configs([WorkerConfig("notebook", 1, module="mine", registration="self")], profile)
    assert (explicit[0].module, explicit[0].registration) == ("mine", "self")


def test_the_auto_profile_follows_the_installed_clm():
    installed = installed_clm()
    [config] = resolve_configs([WorkerConfig("notebook", 1)])
    assert config.module == installed.modules["notebook"]
    assert config.registration == installed.generation.registration


def test_an_unknown_profile_is_refused():
    expected = "clm_profile: '2.0' is not allowed; expected one of 'auto', '0.3', '1.x'"
    with pytest.raises(ConfigError, match=expected):
        resolve_configs([WorkerConfig("notebook", 1)], "2.0")


def test_a_module_this_python_cannot_run_is_refused_at_construction(tmp_path):
    with pytest.raises(ConfigError, match="a module that `.*` can run") as info:
        WorkerPoolManager(tmp_path / "jobs.db", tmp_path, [WorkerConfig("notebook", 1, module="no_such")])
    assert info.value.setting == "module (worker 'notebook')"
    assert not (tmp_path / "jobs.db").exists()


def test_no_workers_at_all_is_refused(tmp_path):
    for configs in ([], [WorkerConfig("notebook", 0, module=SIM)]):
        with pytest.raises(ConfigError, match="at least one WorkerConfig with a count above 0"):
            WorkerPoolManager(tmp_path / "jobs.db", tmp_path, configs)


def test_a_database_in_a_missing_folder_is_refused_at_construction(tmp_path):
    with pytest.raises(ConfigError, match="does not exist") as info:
        WorkerPoolManager(tmp_path / "no" / "jobs.db", tmp_path, [WorkerConfig("notebook", 1, module=SIM)])
    assert info.value.setting == "db_path"


def manager(tmp_path, **kwargs):
    configs = [WorkerConfig("notebook", 1, module=SIM)]
    return WorkerPoolManager(tmp_path / "jobs.db", tmp_path, configs, **kwargs)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CLM_MAX_WORKER_STARTUP_CONCURRENCY": "abc"},
         "max_startup_concurrency (env CLM_MAX_WORKER_STARTUP_CONCURRENCY): 'abc' is not allowed; "
         "expected a whole number from 1 to 1000"),
        ({"CLM_MAX_WORKER_STARTUP_CONCURRENCY": "0"},
         "max_startup_concurrency (env CLM_MAX_WORKER_STARTUP_CONCURRENCY): 0 is not allowed"),
        ({"CLM_MAX_WORKER_STARTUP_CONCURRENCY": "2.5"},
         "max_startup_concurrency (env CLM_MAX_WORKER_STARTUP_CONCURRENCY): '2.5' is not allowed"),
        ({"CLM_WORKER_REGISTRATION_TIMEOUT": "soon"},
         "registration_timeout (env CLM_WORKER_REGISTRATION_TIMEOUT): 'soon' is not allowed; "
         "expected a number of seconds from 0.1 to 3600"),
        ({"CLM_WORKER_REGISTRATION_TIMEOUT": "nan"},
         "registration_timeout (env CLM_WORKER_REGISTRATION_TIMEOUT): nan is not allowed"),
        ({"CLM_WORKER_REGISTRATION_TIMEOUT": "-1"},
         "registration_timeout (env CLM_WORKER_REGISTRATION_TIMEOUT): -1.0 is not allowed"),
    ],
)
def test_bad_environment_values(tmp_path, monkeypatch, env, message):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as info:
        manager(tmp_path)
    assert str(info.value).startswith(message)


def test_environment_and_argument_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("CLM_MAX_WORKER_STARTUP_CONCURRENCY", "4")
    monkeypatch.setenv("CLM_WORKER_REGISTRATION_TIMEOUT", "2.5")
    from_env = manager(tmp_path)
    assert (from_env.settings.concurrency, from_env.settings.registration_timeout) == (4, 2.5)
    explicit = manager(tmp_path, max_startup_concurrency=7, registration_timeout=3)
    assert (explicit.settings.concurrency, explicit.settings.registration_timeout) == (7, 3.0)


def test_defaults(tmp_path, monkeypatch):
    monkeypatch.delenv("CLM_MAX_WORKER_STARTUP_CONCURRENCY", raising=False)
    monkeypatch.delenv("CLM_WORKER_REGISTRATION_TIMEOUT", raising=False)
    settings = manager(tmp_path).settings
    assert (settings.concurrency, settings.registration_timeout, settings.slot_mode) == (10, 10.0, "spawn")


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"max_startup_concurrency": 0}, "max_startup_concurrency"),
        ({"max_startup_concurrency": "10"}, "max_startup_concurrency"),
        ({"registration_timeout": 0}, "registration_timeout"),
        ({"slot_mode": "always"}, "slot_mode"),
        ({"stop_timeout": -2}, "stop_timeout"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, setting):
    with pytest.raises(ConfigError) as info:
        manager(tmp_path, **kwargs)
    assert info.value.setting == setting


def test_missing_workspace(tmp_path):
    with pytest.raises(ConfigError, match="workspace_path: .* expected an existing folder"):
        WorkerPoolManager(tmp_path / "jobs.db", tmp_path / "nope", [WorkerConfig("notebook", 1)])
