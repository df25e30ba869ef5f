"""The agent's set-up between fork and exec in C (sandbox/spawn_c/), when sandbox._spawn is built.

init prepares everything in Python first: the Landlock ruleset (built here, in the sandbox's mount
namespace), the rlimits, the filter, the program found on PATH and its argv and environment as
bytes. sandbox._spawn then starts the agent with clone(CLONE_VM|CLONE_VFORK), as posix_spawn does,
and the child runs the agent rows of sandbox.launch.STAGES in the same order with raw system calls
before its execve: no copy of the Python process is made and none has to be unmapped at exec.
The child prints nothing; init prints what the Python stage would have printed once it is gone.
"""

from __future__ import annotations

import errno
import os
import signal

from sandbox import _libc, landlock
from sandbox.errors import SandboxError, hint_for

try:
    from sandbox import _spawn
except ImportError:  # built without a C compiler: the agent's stages run in a forked Python process
    _spawn = None

# Set back to SIG_DFL in the agent even when ignored (as the Python stage restore_signals does);
# every signal with a handler is reset too.
DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
SECCOMP_FLAGS = _libc.SECCOMP_FILTER_FLAG_NEW_LISTENER | _libc.SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
# stage -> the call that failed, for the one-line error (chdir names its directory instead)
CALLS = {"restore_signals": "rt_sigaction", "close_fds": "close_range", "rlimits": "prlimit64",
         "drop_capabilities": "prctl(PR_CAPBSET_DROP)",
         "no_new_privs": "prctl(PR_SET_NO_NEW_PRIVS)", "landlock": "landlock_restrict_self",
         "seccomp": "seccomp(SECCOMP_SET_MODE_FILTER)", "hand_over_listener": "handing over the seccomp listener"}


def unavailable_reason() -> str | None:
    """None when the compiled start-up can run the agent's stages, else why the Python stages run."""
    if _spawn is None:
        return "sandbox._spawn was not built (reinstall with gcc and the Python headers present)"
    from sandbox.launch import AGENT_STAGES  # launch imports this module
    compiled = getattr(_spawn, "STAGES", None)
    if compiled != AGENT_STAGES:  # failures are reported by index: both lists must be the same
        return (f"sandbox._spawn runs the stages {compiled!r}, not sandbox.launch's {AGENT_STAGES!r} "
                "(rebuild it: python3 setup.py build_ext --inplace)")
    return None


def available() -> bool:
    return unavailable_reason() is None


def start(run, stages: tuple[str, ...], exec_target: tuple) -> int:
    """Start the agent set up by C; returns its pid once it has exec'd (or exited, its message
    printed here: the child itself prints nothing). Raises SandboxError naming the stage that failed."""
    ruleset = None
    if run.spec.landlock is not None:
        try:
            ruleset = landlock.build_ruleset(run.spec.landlock)
        except OSError as err:
            raise SandboxError("landlock", err.strerror or str(err), hint_for("landlock", err.errno)) from None
    path, argv, envp, failure = exec_target
    try:
        pid, failed, err, exec_errno = _spawn.spawn_agent(
            sock=run.sock.fileno(), cwd=None if run.spec.cwd is None else os.fsencode(run.spec.cwd),
            rlimits=run.limits.rlimit_list(), ruleset=-1 if ruleset is None else ruleset,
            program=run.program if run.spec.seccomp else b"", seccomp_flags=SECCOMP_FLAGS,
            default_signals=list(DEFAULT_SIGNALS), drop_capabilities=list(run.cap_drop), path=path, argv=argv,
            envp=envp,
            exit_status=None if failure is None else failure[1])
    except OSError as exc:
        raise SandboxError("fork_agent", f"clone: {exc.strerror}", hint_for("fork_agent", exc.errno)) from None
    except (ValueError, OverflowError) as exc:
        if getattr(exc, "stage", None) not in stages:
            raise
        # a value the child could not be given fails its stage, as in the Python stages
        raise SandboxError(exc.stage, f"{type(exc).__name__}: {exc}", hint_for(exc.stage, None)) from None
    finally:
        if ruleset is not None:
            os.close(ruleset)
    if failed != -1:
        if not 0 <= failed < len(stages):  # fail closed: never guess which stage an unknown index means
            raise SandboxError("fork_agent", f"the compiled start-up reported stage {failed} of {len(stages)}",
                               hint_for("fork_agent", None))
        raise stage_error(stages[failed], err, run.spec.cwd)
    if failure is not None:
        _write_stderr(failure[0])
    elif exec_errno:
        _write_stderr(exec_error(run.spec.argv[0], exec_errno))
    return pid


def exec_error(argv0: str, err: int) -> bytes:
    """What the agent prints when execve fails, as the Python stage prints it."""
    return f"faramesh-sandbox: {argv0}: {os.strerror(err)}\n".encode()


def _write_stderr(message: bytes) -> None:
    try:
        while message:
            message = message[os.write(2, message):]
    except OSError:  # the agent's stderr is closed or gone: there is nowhere to say it
        pass


def stage_error(stage: str, err: int, cwd: str | None) -> SandboxError:
    if stage == "chdir":
        text = f"{os.strerror(err)}: {cwd}"  # as the Python stage's OSError reads
    elif stage == "hand_over_listener" and err == errno.ECONNRESET:
        text = "the supervisor did not take the seccomp listener"
    else:
        text = f"{CALLS[stage]}: {os.strerror(err)}"
    return SandboxError(stage, text, hint_for(stage, err))


def exec_target(argv: list, env: dict, cwd: str | None, find_program) -> tuple:
    """(path, argv, envp, failure) for the C child: what execve gets, all bytes; or, when CMD
    cannot be passed to execve at all, the status the child exits with instead and the message
    init prints for it, as the Python stage's os.execve would report it."""
    try:
        path = find_program(argv[0], env.get("PATH", os.defpath), cwd)
    except FileNotFoundError as err:
        return b"", [], [], (exec_error(argv[0], err.errno), 127)
    args, envp, failure = encoded(argv, env)
    try:
        return (b"", [], [], failure) if failure else (_plain(os.fsencode(path)), args, envp, None)
    except ValueError as err:
        return b"", [], [], (f"faramesh-sandbox: {argv[0]!r}: {err}\n".encode(), 126)


def encoded(argv: list, env: dict) -> tuple[list[bytes], list[bytes], tuple | None]:
    """(argv, envp, None) as execve takes them, all bytes; or ([], [], (message, 126)) when CMD
    cannot be passed to execve at all, as the Python stage's os.execve would report it."""
    try:
        args = [_plain(os.fsencode(arg)) for arg in argv]
        envp = [_variable(os.fsencode(key), os.fsencode(value)) for key, value in env.items()]
        return args, envp, None
    except ValueError as err:
        return [], [], (f"faramesh-sandbox: {argv[0]!r}: {err}\n".encode(), 126)


def _plain(value: bytes) -> bytes:
    if b"\0" in value:
        raise ValueError("embedded null byte")
    return value


def _variable(key: bytes, value: bytes) -> bytes:
    if not key or b"=" in key[1:]:  # as os.execve checks
        raise ValueError("illegal environment variable name")
    return _plain(key) + b"=" + _plain(value)
