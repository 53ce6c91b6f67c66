"""The docker executor: each worker is a container of a worker image.

Blocking and thread-safe, like the direct executor: the startup engine calls
every method through ``trio.to_thread`` (spawns under the startup limiter),
many at once for different handles, over one docker client whose HTTP pool
is sized to that concurrency.  Nothing here knows about the database beyond
the path it mounts.

What shapes this module (see DESIGN.md, "Docker facts"):

* **Create, record, then start.**  ``containers.run`` is create + start and
  leaves the created container behind when the start fails.  :meth:`start`
  creates the container, records its id in this executor, starts it, and on
  a failed start removes it again; :meth:`close` removes whatever is still
  recorded.  Every container also carries labels (session, worker type,
  index, db worker id, database identity), so that a later manager finds what
  a dead one left behind (:meth:`remove_containers_of`).
* **Fatal errors before anything exists.**  :meth:`check` runs once per start,
  before any container is created: an unreachable engine or a missing image
  would fail every start the same way, and a missing image must not turn into
  N parallel pulls.  Nothing here ever pulls.
* **Few engine calls.**  :meth:`exit_codes` answers for every handle with one
  ``containers/json`` call filtered by session label (plus one inspect per
  container that has exited), at most every ``exit_poll_interval`` seconds.
* **Orphans** are not this module's business: a container cannot inherit the
  manager's lifeline pipe, so every worker watches its session's lease in
  the database instead (``CLM_SESSION_ID``, :mod:`clm_workers.lease`) and
  stops by itself when its manager died.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The docker SDK ships no type information (types-docker would be a new dev
# dependency for two imports); its objects are used as ``Any`` here.
import docker  # type: ignore[import-untyped]
import docker.errors  # type: ignore[import-untyped]
import docker.types  # type: ignore[import-untyped]
import psutil
import requests.exceptions

from ..errors import FatalExecutorError
from ..plan import WorkerSpec
from ..proctree import ProcessTree, refresh_trees
from .base import Activity, WorkerHandle, protocol_environment

__all__ = [
    "CONTAINER_DB_DIR",
    "CONTAINER_WORKSPACE",
    "DockerExecutor",
    "EXIT_CODE_GONE",
    "LABEL_DB",
    "LABEL_SESSION",
    "WORKER_MODULE_ENV",
    "database_identity",
]

log = logging.getLogger(__name__)

#: Where the database (its file, and its ``-wal`` and ``-shm``) and the workspace appear inside a container.
CONTAINER_DB_DIR = "/db"
CONTAINER_WORKSPACE = "/workspace"

#: Whom a container runs as when neither the invoking user nor the data's owner is
#: a user other than root: ``nobody``.  Containers never run as root.
FALLBACK_USER = (65534, 65534)
#: How many processes and threads one container may have (a CLM notebook worker
#: with its kernel uses about 40).
DEFAULT_PIDS_LIMIT = 512
#: An image label: ``true`` when the image's worker runs on a read-only root
#: file system (only ``/tmp``, a tmpfs, writable).  The clm-workers image has it.
LABEL_READ_ONLY = "clm.read-only-rootfs"

#: The variable that tells the worker image which module to run (see worker-image/Dockerfile).
WORKER_MODULE_ENV = "CLM_WORKER_MODULE"

LABEL_MANAGED_BY = "clm.managed-by"
LABEL_SESSION = "clm.session"
LABEL_DB = "clm.db"
LABEL_DB_PATH = "clm.db-path"
LABEL_WORKER_TYPE = "clm.worker-type"
LABEL_WORKER_INDEX = "clm.worker-index"
LABEL_DB_WORKER_ID = "clm.db-worker-id"
MANAGED_BY = "clm-workers"

#: :meth:`DockerExecutor.exit_codes` for a container that no longer exists
#: (removed by someone else) and whose exit code was never seen.
EXIT_CODE_GONE = -1

#: How many log lines :meth:`DockerExecutor.kill` keeps before removing a container.
_KEPT_LOG_LINES = 50

# The engine itself is gone (refused, reset), not just this one container.
_ENGINE_GONE = requests.exceptions.ConnectionError


def database_identity(db_path: Path | str) -> str:
    """A short, stable name for one database file: 16 hex of the hash of its real path.

    Every container carries it as the ``clm.db`` label, so a manager only
    ever cleans up containers of its own database.
    """
    real = os.path.realpath(db_path)
    return hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest()[:16]


@dataclass(frozen=True)
class Container:
    """``WorkerHandle.native`` of a docker worker."""

    id: str
    name: str


class DockerExecutor:
    """Start CLM workers as containers (``execution_mode="docker"``).

    Each worker is one container of ``spec.image``, named ``spec.executor_id``
    (``docker-<type>-<index>-<hex>``, unique per manager and run) and run
    with ``--init`` (a real PID 1 that forwards signals and reaps), the
    config's ``memory_limit``, the database's folder mounted at ``/db`` and
    the workspace at ``/workspace`` (both read-write; SQLite's WAL shares
    memory through the ``-shm`` file, which works because host and container
    open the same file of the same kernel), the environment of
    clm-protocol.md (``DB_PATH=/db/<file>``, ``CLM_WORKER_ID``, ...) plus
    ``CLM_WORKER_MODULE=spec.module``, and as ``user`` (default: this
    process's uid:gid, so files the worker writes belong to the user).
    Docker sets ``HOSTNAME`` to the container's 12-character id, which a CLM
    0.3 worker registers under.

    The handle's ``executor_id`` is the container's full id; the
    pre-registered row's ``container_id`` is the name.

    The docker client is made on first use (so constructing this executor
    never talks to the engine), from the environment (``DOCKER_HOST``, ...)
    or ``base_url``, with an HTTP pool of ``pool_size`` connections: size it
    to the number of calls that may run at once (startup concurrency plus
    the watcher's poll), or docker-py discards connections.

    ``network``: connect every container to this network, created (bridge,
    labelled) by :meth:`check` when missing and never removed.

    Call :meth:`close` after every worker is stopped.
    """

    def __init__(
        self,
        *,
        db_path: Path,
        workspace_path: Path,
        pool_size: int = 10,
        network: str | None = None,
        log_level: str = "INFO",
        user: tuple[int, int] | None = None,
        pids_limit: int = DEFAULT_PIDS_LIMIT,
        base_url: str | None = None,
        exit_poll_interval: float = 0.05,
        timeout: float = 30.0,
    ) -> None:
        # Resolved here: a symlink on the way is followed once, seen, and never again.
        self.db_path = Path(os.path.realpath(db_path))
        self.workspace_path = Path(os.path.realpath(workspace_path))
        self.pids_limit = pids_limit
        #: ``(mounts, uid:gid, whether the database's folder is mounted)``, made at the first start.
        self._plan: tuple[list[Any], str, bool] | None = None
        self._read_only_images: set[str] = set()
        self.pool_size = pool_size
        self.network = network
        self.log_level = log_level
        self.user = user
        self.base_url = base_url
        self.exit_poll_interval = exit_poll_interval
        self.timeout = timeout
        self.db_identity = database_identity(self.db_path)
        self._client_lock = threading.Lock()
        self._docker: docker.DockerClient | None = None
        # Guards everything below.
        self._lock = threading.Lock()
        self._closed = False
        #: Containers this executor created and has not removed: id -> (name, created at).
        self._containers: dict[str, tuple[str, float]] = {}
        #: Exit codes seen (final: a container never runs again).
        self._exit_codes: dict[str, int] = {}
        #: Log tails kept by :meth:`kill` for :meth:`output_tail`.
        self._kept_logs: dict[str, str] = {}
        # The last containers/json answer per session: (taken at, {id: state}).
        self._listing_lock = threading.Lock()
        self._listings: dict[str, tuple[float, dict[str, str]]] = {}

    # -- Executor protocol ---------------------------------------------------

    def check(self, specs: Sequence[WorkerSpec]) -> None:
        """Fail fast, before any container exists, for what would fail every start.

        Raises :class:`FatalExecutorError` when the engine cannot be reached
        or an image is not present locally (nothing is pulled), or the network
        cannot be created.  Notes which images run on a read-only root file
        system (:data:`LABEL_READ_ONLY`).
        """
        api = self._client().api
        for image in sorted({spec.image or "" for spec in specs}):
            try:
                info = api.inspect_image(image)
                labels = (info.get("Config") or {}).get("Labels") or {}
                if str(labels.get(LABEL_READ_ONLY, "")).lower() == "true":
                    with self._lock:
                        self._read_only_images.add(image)
            except docker.errors.NotFound:
                raise FatalExecutorError(_missing_image(image)) from None
            except docker.errors.APIError as exc:
                raise FatalExecutorError(
                    f"cannot inspect the worker image {image!r}: {_explain(exc)}"
                ) from exc
            except _ENGINE_GONE as exc:
                raise FatalExecutorError(self._unreachable(exc)) from exc
        if self.network is not None:
            self._ensure_network(self.network)

    def start(self, spec: WorkerSpec) -> WorkerHandle:
        """Create the worker's container, record it, start it; return without waiting.

        Raises :class:`FatalExecutorError` when the engine went away or the
        image disappeared (every start would fail), :class:`RuntimeError` for
        any other failure of this one container.  A container whose start
        failed is removed before this raises.
        """
        api = self._client().api
        with self._lock:
            if self._closed:
                raise RuntimeError("DockerExecutor is closed; cannot start more workers")
        name = spec.executor_id
        mounts, user, _ = self._mount_plan()
        with self._lock:
            read_only = (spec.image or "") in self._read_only_images
        environment = self.environment(spec)
        if read_only:
            environment.setdefault("HOME", "/tmp")  # the only writable place
        try:
            created = api.create_container(
                spec.image,
                name=name,
                environment=environment,
                labels=self.labels(spec),
                user=user,
                host_config=api.create_host_config(
                    init=True,
                    mem_limit=spec.memory_limit,
                    mounts=mounts,
                    network_mode=self.network,
                    # What a worker needs and nothing more: no capability, no way to gain
                    # privileges (setuid files), a bounded process table, and where the
                    # image allows it no writable root file system but /tmp.
                    cap_drop=["ALL"],
                    security_opt=["no-new-privileges"],
                    pids_limit=self.pids_limit,
                    read_only=read_only,
                    tmpfs={"/tmp": "rw,nosuid,nodev"} if read_only else None,
                ),
            )
        except docker.errors.ImageNotFound:
            raise FatalExecutorError(_missing_image(spec.image or "")) from None
        except docker.errors.APIError as exc:
            raise RuntimeError(f"cannot create container {name} for {spec.label}: {_explain(exc)}") from exc
        except BaseException as exc:
            # No answer (a timeout, a broken connection): the engine may have
            # created it all the same, and only its name can find it.
            self._remove_after_failed_start(name, name)
            if isinstance(exc, _ENGINE_GONE):
                raise FatalExecutorError(self._unreachable(exc)) from exc
            if isinstance(exc, requests.exceptions.RequestException):
                raise RuntimeError(f"cannot create container {name} for {spec.label}: {exc}") from exc
            raise
        container_id = str(created["Id"])
        with self._lock:
            self._containers[container_id] = (name, time.monotonic())
        try:
            api.start(container_id)
        except BaseException as exc:
            self._remove_after_failed_start(container_id, name)
            if isinstance(exc, docker.errors.APIError):
                raise RuntimeError(
                    f"cannot start container {name} for {spec.label}: {_explain(exc)}"
                ) from exc
            if isinstance(exc, _ENGINE_GONE):
                raise FatalExecutorError(self._unreachable(exc)) from exc
            if isinstance(exc, requests.exceptions.RequestException):
                raise RuntimeError(f"cannot start container {name} for {spec.label}: {exc}") from exc
            raise
        return WorkerHandle(spec=spec, executor_id=container_id, native=Container(container_id, name))

    def exit_codes(self, handles: Sequence[WorkerHandle]) -> dict[WorkerHandle, int]:
        """Exit codes of the handles whose container has ended.

        One ``containers/json`` call per session (all handles of a manager
        share one), at most every ``exit_poll_interval`` seconds, plus one
        inspect per container seen ``exited`` for the first time.  A container
        that has disappeared reports :data:`EXIT_CODE_GONE` (-1).
        """
        codes: dict[WorkerHandle, int] = {}
        pending: dict[str, list[WorkerHandle]] = {}
        with self._lock:
            for handle in handles:
                known = self._exit_codes.get(handle.executor_id)
                if known is None:
                    pending.setdefault(handle.spec.session_id, []).append(handle)
                else:
                    codes[handle] = known
        for session_id, group in pending.items():
            taken_at, states = self._listing(session_id)
            for handle in group:
                state = states.get(handle.executor_id)
                if state is None:
                    with self._lock:
                        created_at = self._containers.get(handle.executor_id, ("", 0.0))[1]
                    if created_at >= taken_at:
                        continue  # created after the listing was asked for: not in it yet
                elif state not in ("exited", "dead"):
                    continue
                code = self._inspect_exit_code(handle.executor_id)
                if code is not None:
                    codes[handle] = code
        return codes

    def activity(self, handles: Sequence[WorkerHandle]) -> dict[WorkerHandle, Activity]:
        """CPU time of each running container (every process in it), and whether it is paused.

        One ``containers/json`` call per session (shared with :meth:`exit_codes`)
        for the states.  The CPU time comes from the container's processes
        where the engine runs on this host, else from one one-shot ``stats``
        call per container.  Containers that ended or are gone are left out.
        """
        found: dict[WorkerHandle, Activity] = {}
        by_session: dict[str, list[WorkerHandle]] = {}
        for handle in handles:
            by_session.setdefault(handle.spec.session_id, []).append(handle)
        for session_id, group in by_session.items():
            _, states = self._listing(session_id)
            live = [h for h in group if states.get(h.executor_id) in ("running", "paused")]
            trees = {h: self._host_tree(h) for h in live}
            refresh_trees(t for t in trees.values() if t is not None)
            for handle, tree in trees.items():
                state = states.get(handle.executor_id)
                cpu = tree.cpu_seconds() if tree is not None else self._cpu_seconds(handle.executor_id)
                found[handle] = Activity(cpu, stopped=state == "paused")
        return found

    def request_stop(self, handle: WorkerHandle) -> None:
        """Send SIGTERM (through the init process) to the worker; returns at once; idempotent."""
        try:
            self._client().api.kill(handle.executor_id, signal="SIGTERM")
        except docker.errors.NotFound:
            pass  # removed already
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # 409: not running
                raise

    def kill(self, handle: WorkerHandle) -> None:
        """Remove the container, running or not (``remove(force=True)`` kills it first).

        Keeps the last lines of its log first, for :meth:`output_tail`.
        Idempotent: a container that is already gone counts as removed.
        """
        container_id = handle.executor_id
        api = self._client().api
        with self._lock:
            kept = container_id in self._kept_logs
        if not kept:
            tail = self._fetch_logs(container_id, _KEPT_LOG_LINES)
            if tail is not None:
                with self._lock:
                    self._kept_logs[container_id] = tail
        try:
            api.remove_container(container_id, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            # 409 "removal already in progress": another call is removing it.
            if exc.status_code != 409:
                raise
        with self._lock:
            self._containers.pop(container_id, None)

    def run_queue_wait(self, handle: WorkerHandle) -> float:
        """The container's run-queue wait, where the engine runs on this host (else 0.0)."""
        tree = self._host_tree(handle)
        return tree.run_queue_wait() if tree is not None else 0.0

    def _host_tree(self, handle: WorkerHandle) -> ProcessTree | None:
        """The container's processes as this host sees them, found once and kept on the handle.

        The engine reports the host pid of the container's init; it is taken
        only when that process's cgroup names the container (an engine on
        another machine reports pids of its own).
        """
        if handle.tree is None:
            try:
                pid = self._client().api.inspect_container(handle.executor_id)["State"]["Pid"]
                with open(f"/proc/{pid}/cgroup") as f:
                    if pid and handle.executor_id in f.read():
                        handle.tree = ProcessTree(pid)
            except (docker.errors.DockerException, OSError, KeyError, psutil.Error):
                return None
        return handle.tree

    def output_tail(self, handle: WorkerHandle, lines: int = 20) -> str:
        """The last ``lines`` lines of the container's log (stdout + stderr); "" if none."""
        if lines <= 0:
            return ""
        with self._lock:
            kept = self._kept_logs.get(handle.executor_id)
        text = kept if kept is not None else self._fetch_logs(handle.executor_id, lines)
        if not text:
            return ""
        return "\n".join(text.split("\n")[-lines:])

    def close(self) -> None:
        """Remove any container this executor still holds, then close the client; idempotent."""
        with self._lock:
            self._closed = True
            leftovers = dict(self._containers)
            self._containers.clear()
            self._kept_logs.clear()
        client = self._docker
        if client is None:
            return
        for container_id, (name, _) in leftovers.items():
            log.warning("removing container %s (%s) that was not stopped", name, container_id[:12])
            try:
                client.api.remove_container(container_id, force=True)
            except docker.errors.NotFound:
                pass
            except Exception as exc:  # its session's lease stops it; the next manager removes it
                log.warning("could not remove container %s: %s", name, exc)
        with self._client_lock:
            self._docker = None
        client.close()

    # -- extras --------------------------------------------------------------

    def _mount_plan(self) -> tuple[list[Any], str, bool]:
        """The mounts and the user of every container, worked out at the first start (the database
        exists by then), checked, and kept.

        In WAL mode the database is three files, all of which must be the
        very files the host's processes use (SQLite shares its lock state
        through ``-shm``): each is mounted on its own at ``/db``, and the rest
        of the database's folder stays invisible.  A database in rollback
        mode creates and deletes its journal beside itself, so there the
        folder is mounted (and a warning logged).  A symlink is never
        mounted: Docker would silently mount what it points to.

        Raises :class:`FatalExecutorError` for a database that is missing, a
        ``-wal``/``-shm`` that is not a plain file, or data the container's
        user cannot write.
        """
        with self._lock:
            if self._plan is not None:
                return self._plan
        db, workspace = self.db_path, self.workspace_path
        if not db.is_file():
            raise FatalExecutorError(f"the database {db} does not exist (or is not a file); "
                                     "no container was created")
        companions = [Path(f"{db}-wal"), Path(f"{db}-shm")]
        for path in companions:
            if path.is_symlink() or (path.exists() and not path.is_file()):
                raise FatalExecutorError(
                    f"{path} is not a plain file (a symlink, or something else): refusing to mount it "
                    "into containers; remove it while no process uses the database")
        whole_folder = not all(p.exists() for p in companions)
        if whole_folder:
            log.warning("the database %s is not in WAL mode: its rollback journal comes and goes beside "
                        "it, so containers see its whole folder %s", db, db.parent)
            mounts = [docker.types.Mount(CONTAINER_DB_DIR, str(db.parent), type="bind")]
            writable = [db, db.parent]
        else:
            mounts = [docker.types.Mount(f"{CONTAINER_DB_DIR}/{p.name}", str(p), type="bind")
                      for p in (db, *companions)]
            writable = [db, *companions]
        # Mounts, not binds: binds are keyed by host folder, and the database
        # often lives in the workspace folder itself.
        mounts.append(docker.types.Mount(CONTAINER_WORKSPACE, str(workspace), type="bind"))
        uid, gid = self.user if self.user is not None else container_user(db, workspace)
        if uid == 0:
            raise FatalExecutorError("containers never run as root (user 0); configure another user")
        cannot = [str(p) for p in (*writable, workspace) if not _writable_by(p, uid, gid)]
        if cannot:
            raise FatalExecutorError(
                f"containers run as uid {uid} (gid {gid}), never as root, and that user cannot write "
                f"{', '.join(cannot)}. Give the database and the workspace to a user other than root "
                f"(for example `chown -R USER {workspace}`; containers then run as that user), or make "
                "them writable for it; no container was created.")
        plan = (mounts, f"{uid}:{gid}", whole_folder)
        with self._lock:
            self._plan = plan
        return plan

    def environment(self, spec: WorkerSpec) -> dict[str, str]:
        """The container's environment: the protocol's variables as the container sees them."""
        env = {WORKER_MODULE_ENV: spec.module}
        env.update(
            protocol_environment(
                spec,
                db_path=f"{CONTAINER_DB_DIR}/{self.db_path.name}",
                workspace_path=CONTAINER_WORKSPACE,
                log_level=self.log_level,
            )
        )
        return env

    def labels(self, spec: WorkerSpec) -> dict[str, str]:
        labels = {
            LABEL_MANAGED_BY: MANAGED_BY,
            LABEL_SESSION: spec.session_id,
            LABEL_DB: self.db_identity,
            LABEL_DB_PATH: str(self.db_path),
            LABEL_WORKER_TYPE: spec.worker_type,
            LABEL_WORKER_INDEX: str(spec.index),
        }
        if spec.db_worker_id is not None:
            labels[LABEL_DB_WORKER_ID] = str(spec.db_worker_id)
        return labels

    def sessions_with_containers(self) -> set[str]:
        """The sessions that have containers of this database on the engine (running or not): one call."""
        mine = [f"{LABEL_MANAGED_BY}={MANAGED_BY}", f"{LABEL_DB}={self.db_identity}"]
        found = self._client().api.containers(all=True, filters={"label": mine})
        return {str(labels[LABEL_SESSION]) for info in found
                if LABEL_SESSION in (labels := info.get("Labels") or {})}

    def remove_containers_of(self, sessions: Collection[str]) -> list[str]:
        """Remove every container of this database whose session is in ``sessions``.

        For the containers a manager that died left behind: the caller passes
        the sessions whose lease has expired, never a live one.  Containers
        of other databases (``clm.db`` label) are never touched.  Returns the
        names of the removed containers.
        """
        wanted = set(sessions)
        if not wanted:
            return []
        api = self._client().api
        mine = [f"{LABEL_MANAGED_BY}={MANAGED_BY}", f"{LABEL_DB}={self.db_identity}"]
        found = api.containers(all=True, filters={"label": mine})
        removed: list[str] = []
        for info in found:
            if (info.get("Labels") or {}).get(LABEL_SESSION) not in wanted:
                continue
            name = (info.get("Names") or ["/?"])[0].lstrip("/")
            try:
                api.remove_container(info["Id"], force=True)
            except docker.errors.NotFound:
                continue
            except docker.errors.APIError as exc:
                log.warning("could not remove container %s of a dead session: %s", name, _explain(exc))
                continue
            removed.append(name)
        if removed:
            log.info("removed %d containers of dead sessions: %s", len(removed), ", ".join(removed))
        return removed

    # -- internals -----------------------------------------------------------

    def _client(self) -> docker.DockerClient:
        with self._client_lock:
            if self._docker is None:
                kwargs: dict[str, Any] = {
                    "version": "auto", "max_pool_size": self.pool_size, "timeout": self.timeout,
                }
                try:
                    # version="auto" asks the engine for its API version: this is the ping.
                    if self.base_url is None:
                        self._docker = docker.from_env(**kwargs)
                    else:
                        self._docker = docker.DockerClient(base_url=self.base_url, **kwargs)
                except docker.errors.DockerException as exc:
                    raise FatalExecutorError(self._unreachable(exc)) from exc
            return self._docker

    def _unreachable(self, exc: BaseException) -> str:
        where = self.base_url or os.environ.get("DOCKER_HOST") or "the default socket"
        return (
            f"cannot reach the Docker engine at {where}: {exc}. Start the engine "
            "(for example `sudo systemctl start docker`) or point DOCKER_HOST at it; "
            "no container was created."
        )

    def _ensure_network(self, name: str) -> None:
        api = self._client().api
        try:
            api.inspect_network(name)
            return
        except docker.errors.NotFound:
            pass
        except _ENGINE_GONE as exc:
            raise FatalExecutorError(self._unreachable(exc)) from exc
        try:
            api.create_network(
                name, driver="bridge", check_duplicate=True, labels={LABEL_MANAGED_BY: MANAGED_BY}
            )
            log.info("created docker network %s", name)
        except docker.errors.APIError as exc:
            if exc.status_code == 409:  # another manager created it meanwhile
                return
            raise FatalExecutorError(
                f"cannot create the docker network {name!r}: {_explain(exc)}; create it with "
                f"`docker network create {name}` or configure another network"
            ) from exc

    def _remove_after_failed_start(self, container_id: str, name: str) -> None:
        """Remove a container that never became a worker (``container_id`` may be its name)."""
        try:
            self._client().api.remove_container(container_id, force=True)
        except docker.errors.NotFound:
            pass
        except Exception as exc:  # recorded: close() tries again; its labels find it later
            log.warning("could not remove container %s after its start failed: %s", name, exc)
            with self._lock:
                self._containers.setdefault(container_id, (name, time.monotonic()))
            return
        with self._lock:
            self._containers.pop(container_id, None)

    def _listing(self, session_id: str) -> tuple[float, dict[str, str]]:
        """``(asked at, {container id: state})`` of the session's containers, cached briefly.

        One caller asks the engine while the others wait for its answer, so
        many polling threads make one call per interval, not one each.
        """
        with self._listing_lock:
            cached = self._listings.get(session_id)
            now = time.monotonic()
            if cached is not None and now - cached[0] < self.exit_poll_interval:
                return cached
            found = self._client().api.containers(
                all=True, filters={"label": f"{LABEL_SESSION}={session_id}"}
            )
            listing = (now, {str(c["Id"]): str(c.get("State", "")) for c in found})
            self._listings[session_id] = listing
            return listing

    def _cpu_seconds(self, container_id: str) -> float | None:
        """The container's CPU time so far, as the engine counts it; ``None`` when it does not tell."""
        try:
            # one_shot: the current counters at once, not two samples a second apart.
            stats = self._client().api.stats(container_id, stream=False, one_shot=True)
            return float(stats["cpu_stats"]["cpu_usage"]["total_usage"]) / 1e9
        except (docker.errors.DockerException, requests.exceptions.RequestException, KeyError, TypeError,
                ValueError) as exc:
            log.debug("no CPU time for container %s: %s", container_id[:12], exc)
            return None

    def _inspect_exit_code(self, container_id: str) -> int | None:
        try:
            state: Mapping[str, Any] = self._client().api.inspect_container(container_id)["State"]
        except docker.errors.NotFound:
            code = EXIT_CODE_GONE
        else:
            if state.get("Status") not in ("exited", "dead"):
                return None
            code = int(state.get("ExitCode", EXIT_CODE_GONE))
        with self._lock:
            self._exit_codes[container_id] = code
        return code

    def _fetch_logs(self, container_id: str, lines: int) -> str | None:
        try:
            raw = self._client().api.logs(container_id, stdout=True, stderr=True, tail=lines)
        except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
            log.debug("no logs for container %s: %s", container_id[:12], exc)
            return None
        text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)
        return "\n".join(line.rstrip("\r") for line in text.rstrip("\n").split("\n"))


def container_user(db_path: Path, workspace: Path) -> tuple[int, int]:
    """Whom containers run as: the invoking user, else (run by root) the owner of the database,
    else of the workspace, else :data:`FALLBACK_USER`; never root."""
    if os.getuid() != 0:
        return os.getuid(), os.getgid()
    for path in (db_path, workspace):
        try:
            info = os.stat(path)
        except OSError:
            continue
        if info.st_uid != 0:
            return info.st_uid, info.st_gid
    return FALLBACK_USER


def _writable_by(path: Path, uid: int, gid: int) -> bool:
    """Whether ``uid``:``gid`` (and no other group: a container has only its primary one) may write
    ``path`` (and, for a folder, enter it), by its mode bits."""
    try:
        info = os.stat(path)
    except OSError:
        return False
    need = 0o3 if path.is_dir() else 0o2  # write, and for a folder search too
    if info.st_uid == uid:
        bits = info.st_mode >> 6
    elif info.st_gid == gid:
        bits = info.st_mode >> 3
    else:
        bits = info.st_mode
    return bits & need == need


def _missing_image(image: str) -> str:
    return (
        f"the worker image {image!r} is not present on the Docker engine, and clm-workers "
        f"does not pull images (N workers would pull N copies at once). Build it with "
        f"`nox -s image` (or worker-image/build-image.sh) for clm-workers' simulated workers, "
        f"or pull it once with `docker pull {image}`; no container was created."
    )


def _explain(exc: docker.errors.APIError) -> str:
    return str(exc.explanation or exc)
