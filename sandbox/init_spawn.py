"""The sandbox's init (pid 1) as a small compiled program (sandbox/init_c/, built as sandbox/_init).

The launcher writes everything init and the agent need into a plan (a memfd), then
sandbox._spawn.start_init clones init with clone3(CLONE_VM|CLONE_VFORK) into the new namespaces;
the child execs sandbox/_init at once with the launcher socket, the plan and the program at fixed
fds. No copy of the launcher's memory is made, so none is unmapped when init ends, and init holds
nothing of the launcher's. init runs the init rows of sandbox.launch.STAGES in the same order
(a session of its own, mounts from sandbox.mounts.plan, the hostname, loopback, then the Landlock
ruleset, the PATH search and the agent, set up by the same compiled stages as
sandbox/agent_spawn.py), then forwards signals and exits with the agent's status. A failure comes
back as one message naming the stage, the errno and which item failed; ``error`` writes it as the
Python stages would.

Without the program (or with stages that differ from launch's) init runs the Python stages in a
copy of the launcher (sandbox/launch.py), as before; so does a run in a user namespace (a launcher
that is not root): there the execve of sandbox/_init would drop every capability init holds in the
namespace (its uid is not 0 there), and it could no longer mount.
"""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path

from sandbox import _libc_landlock as ll
from sandbox import agent_spawn, mounts
from sandbox.errors import SandboxError, hint_for

PROGRAM = Path(__file__).with_name("_init")
MAGIC = b"faramesh-init-plan-1\0"
FAILED = b"initfail\0"
# init's stages in the clone child before its execve (sandbox/spawn_c/init_start.c) -> their calls
_CLONE_CHILD_CALLS = {"die_with_launcher": "prctl(PR_SET_PDEATHSIG)",
                      "close_fds": "fcntl(F_DUPFD), dup3 or close_range"}
_MAKE_KINDS = {"dir": b"d", "file": b"f", "symlink": b"l"}  # mounts.Make's kinds in a plan (init.h)


def unavailable_reason() -> str | None:
    """None when init can run compiled, else why it runs the Python stages."""
    if not agent_spawn.available():
        return agent_spawn.unavailable_reason()
    from sandbox.launch import INIT_STAGES  # launch imports this module
    compiled = getattr(agent_spawn._spawn, "INIT_STAGES", None)
    if compiled != INIT_STAGES:
        return (f"sandbox._spawn runs the init stages {compiled!r}, not sandbox.launch's {INIT_STAGES!r} "
                "(rebuild it: python3 setup.py build_ext --inplace)")
    if not os.access(PROGRAM, os.X_OK):
        return f"{PROGRAM} was not built (reinstall with gcc present: python3 setup.py build_ext --inplace)"
    return None


def available() -> bool:
    return unavailable_reason() is None


class Started:
    """What the launcher keeps of a compiled init's start: the plan's texts for its errors, and the
    temp files its mounts show (unlinked once set-up is over)."""

    def __init__(self, pid: int, plan: "Plan"):
        self.pid, self.plan = pid, plan

    def finish(self) -> None:
        self.plan.sources.unlink()


def start(run, namespaces: int, cgroup_fd: int | None, exit_signal: int, sock: int) -> Started:
    """Start the compiled init; raises SandboxError (init reaped) when it could not exec."""
    plan = Plan(run)
    try:
        memfd = os.memfd_create("faramesh-init-plan", os.MFD_CLOEXEC)
        try:
            _write_all(memfd, plan.encode())
            program = os.open(PROGRAM, os.O_PATH | os.O_CLOEXEC)
            try:
                pid, failed, err = agent_spawn._spawn.start_init(
                    namespaces=namespaces, cgroup=-1 if cgroup_fd is None else cgroup_fd, exit_signal=exit_signal,
                    sock=sock, plan=memfd, program=program)
            finally:
                os.close(program)
        finally:
            os.close(memfd)
    except BaseException:
        plan.sources.unlink()
        raise
    if failed != -1:
        os.waitpid(pid, 0x40000000)  # __WALL: its exit signal is not SIGCHLD
        plan.sources.unlink()
        stages = agent_spawn._spawn.INIT_STAGES
        stage = stages[failed] if 0 <= failed < len(stages) else "clone_init"
        what = _CLONE_CHILD_CALLS.get(stage, f"execve({PROGRAM})")
        raise SandboxError(stage, f"{what}: {os.strerror(err)}", hint_for(stage, err))
    return Started(pid, plan)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class Plan:
    """The plan's records (format: sandbox/init_c/init.h), and what each item of it is called."""

    def __init__(self, run):
        spec = run.spec
        self.spec = spec
        self.sources = mounts.FileSources(spec.session_id)
        try:
            self.mounts = mounts.plan(spec, self.sources)
        except BaseException:
            self.sources.unlink()
            raise
        self.run = run

    def encode(self) -> bytes:
        spec, run = self.spec, self.run
        out, record = _records()
        for step in self.mounts:
            if isinstance(step, mounts.Make):
                record("d", _MAKE_KINDS[step.kind], _text(step.path), _text(step.target))
                continue
            record("m", struct.pack("<Q", step.flags), *(_text(value) for value in
                                                           (step.source, step.target, step.fstype, step.data)))
        if "uts" in spec.namespaces:
            record("h", _field("hostname", spec.hostname))
        if "net" in spec.namespaces:
            record("l")
        found = spec.landlock
        if found is not None and (found.fs_handled or found.net_handled or found.scoped):
            record("r", struct.pack("<QQQQI", found.fs_handled, found.net_handled, found.scoped, ll.FS_FILE_RIGHTS,
                                    ll.ruleset_attr_size(found.abi)))
            for path, rights in sorted(found.paths.items()):
                record("p", struct.pack("<Q", rights), _field("landlock", path))
            for port, rights in sorted(found.ports.items()):
                record("n", struct.pack("<QQ", rights, port))
        for resource, value in run.limits.rlimit_list():
            if not 0 <= value < 2**64:  # never wrapped around to a small limit
                raise SandboxError("rlimits", "OverflowError: int too big to convert", hint_for("rlimits", None))
            record("L", struct.pack("<IQ", resource, value))
        if spec.seccomp:
            record("F", run.program)
            record("f", struct.pack("<I", agent_spawn.SECCOMP_FLAGS))
        for signum in agent_spawn.DEFAULT_SIGNALS:
            record("s", struct.pack("<I", signum))
        for number in run.cap_drop:
            record("k", struct.pack("<I", number))
        if getattr(run, "late", None) is not None:
            record("w")  # the command comes with the release (encode_late)
        else:
            _command_records(spec, record)
        record("z")  # the end: a plan cut short anywhere is refused
        return b"".join(out)

    def encode_late(self) -> bytes:
        """The late plan: the command of a plan that waited for one, sent with the release."""
        out, record = _records()
        _command_records(self.spec, record)
        record("z")
        return b"".join(out)

    def call(self, stage: str, item: int) -> str:
        """How the failed item of ``stage`` is named in its error, as the Python stages name it."""
        if stage == "mounts" and 0 <= item < len(self.mounts):
            return self.mounts[item].call()
        if stage == "new_session":
            return "setsid()"
        if stage == "hostname":
            return f"sethostname({self.spec.hostname!r})"
        if stage == "loopback":
            return "ioctl(SIOCSIFFLAGS, 'lo', IFF_UP)"
        return ""


def _records():
    """A plan's head, and how a record is added to it."""
    from sandbox.launch import INIT_STAGES, AGENT_STAGES  # launch imports this module
    out = [MAGIC, b"".join(name.encode() + b"\0" for name in (*INIT_STAGES, *AGENT_STAGES)), b"\0"]

    def record(tag: str, *parts: bytes) -> None:
        payload = b"".join(parts)
        out.append(tag.encode() + struct.pack("<I", len(payload)) + payload)
    return out, record


def _command_records(spec, record) -> None:
    """The agent's working directory, the PATH search, its arguments and environment."""
    if spec.cwd is not None:
        record("c", _field("chdir", spec.cwd))
    env = spec.agent_env()
    args, envp, failure = agent_spawn.encoded(spec.argv, env)
    if "\0" in spec.argv[0] and "/" not in spec.argv[0]:  # no file on PATH has that name
        failure = (agent_spawn.exec_error(spec.argv[0], errno.ENOENT), 127)
    if failure is not None:
        message, status = failure
        record("x", struct.pack("<I", status), message)
    elif "/" not in spec.argv[0]:
        record("P", _text(env.get("PATH", os.defpath)))
    for arg in args:
        record("a", arg + b"\0")
    for variable in envp:
        record("e", variable + b"\0")


def _text(value: str | None) -> bytes:
    """A string field: "" stands for none (no field that may be empty is ever "")."""
    return _field("clone_init", value or "")


def _field(stage: str, value: str) -> bytes:
    """``value`` as a NUL-terminated field; one with a NUL of its own fails ``stage``, as the
    Python stage fails on it (never cut short at the NUL)."""
    try:
        encoded = os.fsencode(value)
    except TypeError as err:
        raise SandboxError(stage, f"TypeError: {err}", hint_for(stage, None)) from None
    if b"\0" in encoded:
        raise SandboxError(stage, "ValueError: embedded null byte", hint_for(stage, None))
    return encoded + b"\0"


def is_failure(message: bytes) -> bool:
    return message.startswith(FAILED)


def error(message: bytes, started: Started) -> SandboxError:
    """The SandboxError for init's failure message, worded as the Python stages word it."""
    try:
        stage, err_text, item_text, text = message[len(FAILED):].decode("utf-8", "replace").split("\0", 3)
        err, item = int(err_text), int(item_text)
    except ValueError:
        return SandboxError("startup", "the sandbox init sent a message that cannot be read", "")
    if stage == "landlock" and text == "ruleset":  # building it, in init (agent_spawn.start words it so)
        return SandboxError(stage, os.strerror(err), hint_for(stage, err))
    if stage in agent_spawn.CALLS or stage == "chdir":
        return agent_spawn.stage_error(stage, err, started.plan.spec.cwd)
    if stage == "clone_init":
        return SandboxError(stage, f"the sandbox init refused its plan: {text}", hint_for(stage, None))
    call = started.plan.call(stage, item) or text or stage
    return SandboxError(stage, f"{call}: {os.strerror(err)}", hint_for(stage, err))
