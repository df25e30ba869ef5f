"""Resource limits for the agent's whole sandbox: memory, tasks, CPU, open files and wall time.

Each limit uses the strongest mechanism this host offers (see ``mechanisms()``):

    memory   cgroup v2 memory.max  > cgroup v1 memory.limit_in_bytes  > RLIMIT_AS (per process)
    pids     cgroup v2 pids.max    > cgroup v1 pids.max               > RLIMIT_NPROC (per uid)
    cpus     cgroup v2 cpu.max     > cgroup v1 cpu.cfs_quota_us       > none: the run is refused
    files    RLIMIT_NOFILE (per process)
    timeout  the launcher kills init, and with it the whole pid namespace

A cgroup controller is used in v2 when the agent's v2 cgroup can have it, else in v1 when the
host mounts it there (hybrid hosts). A limit that cannot be enforced refuses the run.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from dataclasses import dataclass

from sandbox import cgroups
from sandbox.cgroups import read_file, write_file
from sandbox._limits_files import CONTROLLER_OF, EVENTS, V1_FILES, V2_FILES, fired_message
from sandbox.errors import SandboxError

V2, V1, RLIMIT, NONE = "cgroup v2", "cgroup v1", "rlimit", "none"
EXIT_TIMEOUT = 124  # as timeout(1)
# Always set in the agent: no real-time scheduling and no nice value below the launcher's. CAP_SYS_NICE
# is dropped (sandbox/capabilities.py), but a launcher whose hard limits allow either would pass it on,
# and SCHED_FIFO spinners starve the host.
SCHEDULING_FLOOR = {resource.RLIMIT_RTPRIO: 0, resource.RLIMIT_NICE: 0}


@dataclass(frozen=True)
class Limits:
    memory: int | None = None  # bytes
    pids: int | None = None  # tasks (processes and threads)
    cpus: float | None = None  # CPUs' worth of time per period
    files: int | None = None  # open file descriptors per process
    timeout: float | None = None  # seconds of wall time
    defaults: frozenset[str] = frozenset()  # built-in defaults: enforced where a cgroup can, else skipped

    def cgroup_limits(self) -> dict[str, int | float]:
        """The limits that want a cgroup controller, by name."""
        return {name: getattr(self, name) for name in CONTROLLER_OF if getattr(self, name) is not None}


def cgroup_dirs(session_id: str) -> list[str]:
    """Every cgroup directory a run with this session may create (for clean-up after a crash)."""
    dirs = []
    v2 = cgroups.v2_mount()
    if v2 is not None:
        dirs.append(os.path.join(v2, cgroups.own_v2_path().lstrip("/"), f"faramesh-{session_id}"))
    for controller in sorted(set(CONTROLLER_OF.values())):
        parent = _v1_parent(controller)
        if parent is not None:
            dirs.append(os.path.join(parent, f"faramesh-{session_id}"))
    return dirs


def mechanisms(v2_dir: str | None = None) -> dict[str, str]:
    """limit name -> "cgroup v2 /path", "cgroup v1 /path", "rlimit NAME" or "none" on this host.

    ``v2_dir``: the agent's v2 cgroup, when one exists; without it v2 is judged by the parent's
    available controllers (what doctor reports)."""
    found = {}
    for name, controller in CONTROLLER_OF.items():
        v1_parent = _v1_parent(controller)
        if _v2_has(controller, v2_dir):
            found[name] = f"{V2} {v2_dir or _v2_parent()}"
        elif v1_parent is not None:
            found[name] = f"{V1} {v1_parent}"
        elif name in _RLIMIT_FALLBACK:
            found[name] = f"{RLIMIT} {_RLIMIT_FALLBACK[name][0]}"
        else:
            found[name] = NONE
    found["files"] = f"{RLIMIT} RLIMIT_NOFILE"
    found["timeout"] = "launcher timer (kills the pid namespace)"
    return found


# limit -> (rlimit name, resource constant) when no cgroup controller can hold it
_RLIMIT_FALLBACK = {"memory": ("RLIMIT_AS", resource.RLIMIT_AS), "pids": ("RLIMIT_NPROC", resource.RLIMIT_NPROC)}


class Enforcer:
    """One run's limits: ``prepare`` before clone (cgroup files written), ``join(init_pid)`` while
    init waits for its release, ``apply_rlimits`` in the agent, ``expired()`` polled by the
    launcher, ``close()`` after init died."""

    def __init__(self, limits: Limits | None, session_id: str, v2_dir: str | None):
        self.limits = limits or Limits()
        self.session_id = session_id
        self.v2_dir = v2_dir
        self.v1_dirs: dict[str, str] = {}  # controller -> directory we created
        self.rlimits: dict[int, int] = {}
        self.used: dict[str, str] = {}  # limit -> mechanism actually used
        self.skipped: list[str] = []  # default limits this host cannot hold in a cgroup
        self.deadline: float | None = None
        self.timed_out = False
        self.reported = False  # report_fired() printed what fired

    def prepare(self) -> None:
        """Create and configure the cgroups; raises SandboxError when a limit cannot be enforced."""
        try:
            for name, value in self.limits.cgroup_limits().items():
                if name in self.limits.defaults:
                    self._place_default(name, value)
                else:
                    self._place(name, value)
        except OSError as err:
            raise SandboxError("limits", err.strerror or str(err),
                               "run as root or give the launcher a delegated cgroup; or drop the limit") from None
        if self.limits.files is not None:
            self.rlimits[resource.RLIMIT_NOFILE] = self.limits.files
            self.used["files"] = f"{RLIMIT} RLIMIT_NOFILE"

    def _place_default(self, name: str, value: int | float) -> None:
        """A default is never worth refusing a run, nor an rlimit (RLIMIT_NPROC counts the whole uid)."""
        try:
            placed = self._place(name, value, fallback=False)
        except OSError as err:
            placed, why = False, err.strerror
        else:
            why = f"no cgroup {CONTROLLER_OF[name]} controller"
        if not placed:
            self.skipped.append(f"default {name} limit {value} skipped: {why}")

    def _place(self, name: str, value: int | float, fallback: bool = True) -> bool:
        """Use the first mechanism that works; False when only an rlimit could and ``fallback`` is off."""
        controller = CONTROLLER_OF[name]
        if self.v2_dir is not None and _enable_v2(controller, self.v2_dir):
            for index, (filename, text) in enumerate(V2_FILES[name](value)):
                _write_if_present(os.path.join(self.v2_dir, filename), text, required=index == 0)
            self.used[name] = f"{V2} {self.v2_dir}"
            return True
        parent = _v1_parent(controller)
        if parent is not None:
            directory = self.v1_dirs.get(controller) or _mkdir(os.path.join(parent, f"faramesh-{self.session_id}"))
            self.v1_dirs[controller] = directory
            for index, (filename, text) in enumerate(V1_FILES[name](value)):
                _write_if_present(os.path.join(directory, filename), text, required=index == 0)
            self.used[name] = f"{V1} {directory}"
            return True
        if not fallback:
            return False
        if name not in _RLIMIT_FALLBACK:
            raise SandboxError("limits", f"no cgroup {controller} controller here: --{name} cannot be enforced",
                               "run `faramesh-sandbox doctor` to see the limits this host supports; drop --"
                               f"{name} or mount the {controller} controller")
        rlimit_name, which = _RLIMIT_FALLBACK[name]
        if which == resource.RLIMIT_NPROC and os.geteuid() == 0:
            # The kernel does not apply RLIMIT_NPROC to root (CAP_SYS_RESOURCE): a fork bomb would pass.
            raise SandboxError("limits", "no pids cgroup controller here, and RLIMIT_NPROC does not bind root",
                               "mount the pids controller (cgroup v1 or v2), or drop --pids")
        self.rlimits[which] = int(value)
        self.used[name] = f"{RLIMIT} {rlimit_name}"
        return True

    def join(self, init_pid: int) -> None:
        """Put init (still waiting for its release, so it has no children) into the v1 cgroups;
        everything it forks stays in them."""
        for directory in self.v1_dirs.values():
            cgroups.join(directory, init_pid)
        self.start_clock()

    def start_clock(self) -> None:
        """--timeout counts from here: init's release, when the command is known."""
        if self.limits.timeout is not None:
            self.deadline = time.monotonic() + self.limits.timeout

    def rlimit_list(self) -> list[tuple[int, int]]:
        """(resource, value) for each rlimit ``apply_rlimits`` sets, soft and hard alike."""
        return sorted({**SCHEDULING_FLOOR, **self.rlimits}.items())

    def apply_rlimits(self) -> None:
        """In the agent, just before exec: soft and hard limit alike, so it cannot raise them
        (unless it holds CAP_SYS_RESOURCE); its children inherit them."""
        for which, value in self.rlimit_list():
            resource.setrlimit(which, (value, value))

    def expired(self) -> bool:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.timed_out = True
        return self.timed_out

    def remaining(self, longest: float) -> float:
        """How long the launcher may wait before checking the deadline again."""
        if self.deadline is None:
            return longest
        return max(0.0, min(longest, self.deadline - time.monotonic()))

    def exit_status(self, status: int) -> int:
        return EXIT_TIMEOUT if self.timed_out else status

    def fired(self) -> list[str]:
        """One line per limit that stopped the agent (read before the cgroups are removed)."""
        lines = []
        if self.timed_out:
            lines.append(fired_message("timeout", self.limits.timeout, 0))
        for name, value in self.limits.cgroup_limits().items():
            mechanism = self.used.get(name, NONE)
            directory = self.v2_dir if mechanism.startswith(V2) else self.v1_dirs.get(CONTROLLER_OF[name])
            if name not in EVENTS or directory is None or not mechanism.startswith((V2, V1)):
                continue
            count = _event_count(name, directory, v2=mechanism.startswith(V2))
            if count:
                lines.append(fired_message(name, value, count))
        return lines

    def report_fired(self) -> None:
        """Print what fired, once (close() does it when nobody did before)."""
        if self.reported:
            return
        self.reported = True
        for line in self.fired():
            try:
                print(f"faramesh-sandbox: {line}", file=sys.stderr, flush=True)
            except OSError:
                pass  # stderr is full or gone: the exit status still says it

    def close(self) -> None:
        """Report what fired, then remove the v1 cgroups (init is dead: its tasks are dying)."""
        try:
            self.report_fired()
        finally:
            for directory in self.v1_dirs.values():
                try:
                    cgroups.destroy(directory)
                except OSError as err:  # the run's reaper retries once the launcher is gone
                    print(f"faramesh-sandbox: warning: cannot remove {directory}: {err.strerror}",
                          file=sys.stderr, flush=True)
            self.v1_dirs = {}


def _event_count(name: str, directory: str, v2: bool) -> int:
    v2_file, v1_file, key = EVENTS[name]
    try:
        text = read_file(os.path.join(directory, v2_file if v2 else v1_file))
    except OSError:
        return 0  # the cgroup is gone: nothing can be said about it
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key:
            return int(parts[1])
    return 0


def _v2_parent() -> str | None:
    mount = cgroups.v2_mount()
    return None if mount is None else os.path.join(mount, cgroups.own_v2_path().lstrip("/"))


def _v2_has(controller: str, v2_dir: str | None) -> bool:
    directory = os.path.dirname(v2_dir) if v2_dir else _v2_parent()
    if directory is None:
        return False
    try:
        return controller in read_file(os.path.join(directory, "cgroup.controllers")).split()
    except OSError:
        return False


def _enable_v2(controller: str, v2_dir: str) -> bool:
    """Make ``controller`` available in the agent's v2 cgroup (enable it in the parent's
    subtree_control); False when the parent lacks it or refuses (EBUSY: it holds processes)."""
    parent = os.path.dirname(v2_dir)
    if not _v2_has(controller, v2_dir):
        return False
    try:
        if controller not in read_file(os.path.join(parent, "cgroup.subtree_control")).split():
            write_file(os.path.join(parent, "cgroup.subtree_control"), f"+{controller}")
    except OSError:
        return False
    return controller in read_file(os.path.join(v2_dir, "cgroup.controllers")).split()


def _v1_parent(controller: str) -> str | None:
    """Our own place in the v1 hierarchy that carries ``controller``, or None."""
    mount = cgroups.v1_mounts().get(controller)
    if mount is None:
        return None
    for line in read_file(cgroups.PROC_CGROUP).splitlines():
        _, names, path = line.split(":", 2)
        if controller in names.split(","):
            return os.path.normpath(os.path.join(mount, path.lstrip("/")))
    return None


def _mkdir(path: str) -> str:
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        pass  # a stale directory of the same session cannot exist: session ids are random
    except OSError as err:
        raise OSError(err.errno, f"mkdir({path}): {os.strerror(err.errno)}") from None
    return path


def _write_if_present(path: str, text: str, required: bool) -> None:
    """The first file of each limit must exist; the others (swap accounting) are optional."""
    if not required and not os.path.exists(path):
        return
    try:
        write_file(path, text)
    except OSError as err:
        raise OSError(err.errno, f"write({path}, {text}): {os.strerror(err.errno)}") from None

