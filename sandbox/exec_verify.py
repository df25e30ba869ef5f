"""Exec decisions without freezing: only the holder is traced, and what the kernel copied is checked.

A single-threaded process exec'ing an ELF file (most execs) is decided under VerifiedExec:
the holder alone is seized before CONTINUE and stopped at PTRACE_EVENT_EXEC, before its first
instruction, where the executable, argv, filename, working directory and program are compared
with the decision. Every other exec freezes the sandbox (sandbox/freeze.py), and FrozenExec
checks its new image, still frozen, the same way.
"""

from __future__ import annotations

import errno
import os
import signal
import struct
import time

from sandbox import _libc_ptrace as pt
from sandbox.freeze import EXEC_TIMEOUT, FROZEN_WCHAN, FreezeError, task_state
from sandbox.memory import RemoteMemory


ELF_MAGIC = b"\x7fELF"
SPIN = 0.002  # seconds of sched_yield polling for the exec stop before sleeping between polls
AT_FDCWD = -100
AT_EXECFN = 31  # auxv entry: address of the filename the kernel copied onto the new stack
UNVERIFIABLE_PREFIXES = ("/proc/", "/dev/fd/")  # magic links: the supervisor's view differs


class ExecChanged(FreezeError):
    """The exec'd image differs from what was decided; the holder was killed before it ran."""


def _file_key(info: os.stat_result) -> tuple:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


class VerifiedExec:
    """One exec decided without freezing the sandbox, for a single-threaded holder that
    execve()s an ELF file.

    The holder alone is seized (PTRACE_O_TRACEEXEC) and interrupted before CONTINUE. The
    kernel then performs the exec and stops the new image at PTRACE_EVENT_EXEC, before its
    first instruction. There we compare what the kernel actually used with the decision:
    the executable (/proc/PID/exe), the argv and the filename it copied onto the new stack
    (/proc/PID/cmdline and AT_EXECFN), the working directory and the program the executed
    file is. Any difference, whoever caused it (a process writing a shared mapping or
    /proc/PID/mem, a renamed symlink, a CLONE_FS sibling's chdir or chroot), kills the holder
    before it runs; on a match it is detached. So no task needs to be frozen: a rewrite
    between our read and the kernel's copy can only turn a permitted exec into a killed one,
    never into an undecided one.

    The program: from the exec on, the executed file cannot be written (ETXTBSY), so its
    content at the stop is the content that runs. When the decision named it without reading
    its content (a system program unchanged since start, or a size no system program has),
    the name depends only on the path, ctime and size, so the same inode with the same stat
    has the same name. When content was compared (``sha256``), it is hashed again at the stop:
    a write through a shared mapping dirtied before our read changes no time stamp.

    Why the conditions: the holder must not be the supervisor's own child (the parent's
    waitpid() would take the tracer's stops; in launch() every agent task descends from
    init). A multi-threaded exec moves the holder's tid (de_thread), so it takes the freezer;
    a single-threaded holder stays single-threaded, as only its own threads could add one
    and it is held. A script runs its interpreter, and the loader the program named in its
    argv, so the file that matters is not /proc/PID/exe; execveat names its file by
    descriptor. Pid reuse: the holder is held in the notification, so its pid stays its own
    while ID_VALID holds, which is checked after the seize. The agent cannot trace the holder
    itself (the filter denies ptrace) and the tracer-only stop is invisible to the holder's parent.
    """

    def __init__(self, pid: int, exe: str, cwd: str, argv: list[bytes], execfn: bytes, root: str = "/",
                 timeout: float = EXEC_TIMEOUT):
        self.pid, self.exe, self.cwd, self.root = pid, exe, cwd, root
        # What /proc/PID/exe and cwd must read, as the supervisor sees them.
        self.exe_link, self.cwd_link = _outside(root, exe), _outside(root, cwd)
        self.cmdline = b"".join(arg + b"\0" for arg in argv)
        self.execfn = execfn
        self.timeout = timeout
        self.attached = False
        # (how to name the file behind /proc/PID/exe, the name decided, the decided file's stat
        # or None): see the class doc for when the stat is enough.
        self.identity: tuple = (None, None, None)

    @classmethod
    def for_exec(cls, pid: int, decoded: dict, args: dict, seen: dict) -> "VerifiedExec | None":
        """A verifier when this exec qualifies (see the class doc), else None. ``seen``: what
        sandbox.decode.exec.exec_arguments read (the agent's root and the examined file)."""
        if decoded.get("syscall") != "execve" or not decoded.get("argv") or not decoded.get("path"):
            return None  # argc 0 gets an empty argv[0] from the kernel: left to the freezer
        if args.get("runs") or args.get("anonymous"):
            return None  # the loader or an interpreter runs another file the decision named
        if any(p.startswith(UNVERIFIABLE_PREFIXES) for p in (args["path"], args["requested"])):
            return None
        examined = seen.get("examined")
        if examined is None or not examined.head.startswith(ELF_MAGIC):
            return None
        if not _single_threaded_stranger(pid):
            return None
        verifier = cls(pid, args["path"], args["cwd"], decoded["argv"], decoded["path"], seen["root"])
        verifier.identity = (None, (examined.program, examined.sha256), examined.info)
        return verifier

    def attach(self) -> None:
        """Seize and interrupt the holder; raises OSError (e.g. EPERM: already traced)."""
        pt.seize(self.pid, pt.PTRACE_O_TRACEEXEC | pt.PTRACE_O_EXITKILL)
        self.attached = True
        pt.interrupt(self.pid)

    def finish(self, continued: bool) -> None:
        """After the answer: wait for the holder's first stop, check an exec, detach.
        Raises ExecChanged (holder killed) on a mismatch, FreezeError on a timeout."""
        if not self.attached:
            return
        status = self._next_status()
        if status is None or not os.WIFSTOPPED(status):
            return  # gone: nothing of the new image ran
        event = pt.stop_event(status)
        if event == pt.PTRACE_EVENT_EXEC:
            problem = self._difference() if continued else "an exec although it was refused"
            if problem:
                self._kill()
                raise ExecChanged(f"pid {self.pid}: {problem}; killed before it ran")
            self._detach(0)  # also drops the pending interrupt
        else:  # the exec failed (or was refused): stopped on its way back to user space
            self._detach(os.WSTOPSIG(status) if event == 0 else 0)
        self.attached = False

    def abandon(self) -> None:
        """Undo a partial attach: take the holder's stop (or exit) and let it go."""
        try:
            self.finish(continued=False)
        except FreezeError:
            pass

    def _next_status(self) -> int | None:
        start = time.monotonic()
        delay = 50e-6
        while True:
            try:
                status = pt.poll_wait(self.pid)
            except ChildProcessError:
                return None
            if status is not None:
                return status
            elapsed = time.monotonic() - start
            if elapsed > self.timeout:
                self._kill()
                raise FreezeError(f"pid {self.pid}: exec did not finish within {self.timeout:.1f}s; killed")
            if elapsed < SPIN:
                os.sched_yield()
            else:  # a slow exec (a large binary, a busy disk): stop burning a CPU it may need
                time.sleep(delay)
                delay = min(delay * 2, 0.001)

    def _difference(self) -> str:
        proc = f"/proc/{self.pid}/"
        try:
            exe, cwd = os.readlink(proc + "exe"), os.readlink(proc + "cwd")
            cmdline, execfn = self._copied()
            executed = os.stat(proc + "exe")
        except OSError as err:
            return f"the new image cannot be inspected ({err.strerror})"
        for what, seen, decided in (("executable", exe, self.exe_link), ("argv", cmdline, self.cmdline),
                                    ("path", execfn, self.execfn), ("cwd", cwd, self.cwd_link)):
            if seen != decided:
                if what in ("executable", "cwd"):
                    seen, decided = _inside(self.root, seen), _inside(self.root, decided)
                return f"{what} {seen!r} is not the decided {decided!r}"
        identify, decided_identity, decided_info = self.identity
        if decided_identity[1] is None and decided_info is not None and \
                _file_key(executed) == _file_key(decided_info):
            return ""  # named without its content, and the same file unchanged: the same name
        try:
            identity = identify(proc + "exe") if identify else None
        except OSError as err:
            return f"the new image cannot be identified ({err.strerror})"
        if identity != decided_identity:
            return f"program {identity!r} is not the decided {decided_identity!r}"
        return ""

    def _copied(self) -> tuple[bytes, bytes]:
        """(argv strings, filename) as the kernel copied them onto the new image's stack.
        /proc/PID/cmdline and auxv (AT_EXECFN) are cheaper to read than /proc/PID/stat."""
        cmdline = _read_start(f"/proc/{self.pid}/cmdline", len(self.cmdline) + 1)
        auxv = _read_start(f"/proc/{self.pid}/auxv", 1024)
        for key, value in struct.iter_unpack("=QQ", auxv[:len(auxv) // 16 * 16]):
            if key == AT_EXECFN:
                return cmdline, RemoteMemory(self.pid).cstring(value)
        return cmdline, b""

    def _detach(self, signum: int) -> None:
        try:
            pt.detach(self.pid, signum)
        except OSError as err:
            if err.errno != errno.ESRCH:
                self._kill()
                raise FreezeError(f"pid {self.pid}: cannot detach ({err.strerror}); killed") from err
            self._take_exit()  # killed meanwhile: a traced zombie only its tracer can release

    def _kill(self) -> None:
        """SIGKILL the stopped holder and take its exit, so its parent can reap it."""
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        self._take_exit()

    def _take_exit(self) -> None:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                status = pt.poll_wait(self.pid)
            except ChildProcessError:
                break
            if status is not None and not os.WIFSTOPPED(status):
                break
            os.sched_yield()
        self.attached = False


def _single_threaded_stranger(pid: int) -> bool:
    """``pid`` has one thread and is not our own child (whose stops our own waitpid() calls
    could take). Two cheap calls instead of a /proc/PID/stat read: procfs gives the task
    directory 2 + the thread count links, and waitid() on a process that is not our child
    fails with ECHILD (WNOWAIT: a child's exit stays for its own waiter)."""
    try:
        if os.stat(f"/proc/{pid}/task").st_nlink != 2 + 1:
            return False
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    except OSError:
        return False
    return False  # our own child


def _read_start(path: str, size: int) -> bytes:
    """Up to ``size`` bytes from the start of ``path`` (one read: /proc files answer whole)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, size)
    finally:
        os.close(fd)


def _outside(root: str, path: str) -> str:
    """An agent-view path as the supervisor sees it (the inverse of _inside)."""
    if root == "/":
        return path
    return root if path == "/" else root + path


def _inside(root: str, host_path: str) -> str:
    """A /proc readlink in the agent's view (as sandbox.decode.exec.agent_view, root given)."""
    if root == "/" or not (host_path == root or host_path.startswith(root + "/")):
        return host_path
    return host_path[len(root):] or "/"


class FrozenExec:
    """What an exec decided with the whole sandbox frozen actually ran, checked before anything
    of it runs (the new image is frozen on its way to user space).

    Freezing stops every task's own code, not the kernel's writes on a task's behalf: a frozen
    task that a fatal signal kills still clears its clear_child_tid word and marks its robust
    futexes on the way out, in memory the exec'ing task may share, so the path or argv can change
    between the decision's read and the kernel's copy. So the new image is compared with the
    decision: the executable must be the decided file, what a /proc or /dev/fd link named, or one
    of the interpreters and loaded programs it named (``runs``); argv must be the decided one (a
    script's interpreter sees ``[interpreter, its argument, the filename, argv[1:]...]``, so that
    tail is compared); the filename the kernel copied (AT_EXECFN) must be the decided one, as the
    kernel spells it (execveat: ``/dev/fd/N/path``). A difference kills the process before its
    first instruction.

    Success or failure: a leader's failed exec leaves its image as it was (compared with the one
    read before the answer). A non-leader's exec, once past the point of no return, takes over
    the leader's pid (de_thread) and the holder's tid goes; until the leader's pid is trapped
    with one thread the image may be half-made, so settle() waits for that."""

    def __init__(self, pid: int, decoded: dict, args: dict, root: str):
        self.holder, self.pid = pid, _thread_group(pid)
        argv = list(decoded.get("argv") or ()) or [b""]  # argc 0: the kernel adds an empty argv[0]
        runs = args.get("runs") or ()
        paths = [path for path in (args["path"], args.get("requested"), *(run["path"] for run in runs)) if path]
        self.executables = {_outside(root, path) for path in paths}
        self.executables |= {target for path in paths if (target := _magic_target(pid, path))}
        self.filename = _kernel_filename(decoded)
        if decoded.get("path") == b"":  # execveat(fd, "", AT_EMPTY_PATH): the descriptor's file
            self.executables.add(os.readlink(f"/proc/{pid}/fd/{decoded.get('dirfd')}"))
        self.scripted = any(run.get("via") == "shebang" for run in runs)
        self.cmdline = b"".join(arg + b"\0" for arg in argv)
        self.tail = b"".join(arg + b"\0" for arg in [self.filename, *argv[1:]])
        self.failed = False  # settle(): the exec returned an error, nothing new runs
        self.before = self._image() if self.holder == self.pid else None  # the image that asked

    def settle(self, timeout: float = EXEC_TIMEOUT) -> None:
        """For a non-leader holder: wait until its exec has failed (it traps under its own tid) or
        the leader's pid holds the whole new image (one thread, trapped). FreezeError on timeout."""
        if self.holder == self.pid:
            return
        deadline = time.monotonic() + timeout
        while True:
            holder_there = os.path.exists(f"/proc/{self.pid}/task/{self.holder}")
            if holder_there and _trapped(self.holder):
                self.failed = True
                return
            if not holder_there and _trapped(self.pid) and _thread_count(self.pid) == 1:
                return
            if not holder_there and task_state(self.pid)[0] in "ZX":
                return  # died on the way (OOM, a kill): nothing of it runs; difference() finds it gone
            if time.monotonic() > deadline:
                raise FreezeError(f"pid {self.pid}: a multi-threaded exec did not finish within {timeout:.1f}s")
            os.sched_yield()

    def _image(self) -> tuple | None:
        """(executable, its file, argv, AT_EXECFN, stack start) of the process now; None when it is
        gone. The file (device, inode) tells a new image from the old one under the same name."""
        proc = f"/proc/{self.pid}/"
        try:
            exe = os.readlink(proc + "exe")
            executed = os.stat(proc + "exe")
            fields = _read_start(proc + "stat", 4096).rsplit(b")", 1)[1].split()
            cmdline = _read_start(proc + "cmdline", max(len(self.cmdline), len(self.tail)) + 4096 + 1)
            auxv = _read_start(proc + "auxv", 1024)
        except (ProcessLookupError, FileNotFoundError):
            return None
        execfn = b""
        for key, value in struct.iter_unpack("=QQ", auxv[:len(auxv) // 16 * 16]):
            if key == AT_EXECFN:
                execfn = RemoteMemory(self.pid).cstring(value)
        return exe, (executed.st_dev, executed.st_ino), cmdline, execfn, fields[25]  # stat field 28: stack start

    def difference(self) -> str:
        """Why the new image is not the decided one; "" when it is, or nothing new runs."""
        if self.failed:
            return ""
        try:
            now = self._image()
        except OSError as err:
            return f"the new image cannot be inspected ({err.strerror})"
        if now is None or (self.before is not None and now == self.before):
            return ""  # gone, or a leader's exec failed: the image that asked goes on
        exe, _file, cmdline, execfn, _stack = now
        if exe not in self.executables:
            return f"executable {exe!r} is none of the decided {sorted(self.executables)!r}"
        if not (cmdline.endswith(self.tail) if self.scripted else cmdline == self.cmdline):
            return f"argv {cmdline[:200]!r} is not the decided {self.cmdline[:200]!r}"
        if execfn != self.filename:
            return f"path {execfn!r} is not the decided {self.filename!r}"
        return ""

    def kill(self) -> None:
        """SIGKILL the frozen process: it dies without running an instruction of the new image."""
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _kernel_filename(decoded: dict) -> bytes:
    """The filename an exec hands the kernel's loader (AT_EXECFN, a script's argument): execve's
    path as given; execveat's too when absolute or from the cwd, else /dev/fd/N[/path]."""
    path, dirfd = decoded.get("path") or b"", decoded.get("dirfd", AT_FDCWD)
    if decoded.get("syscall") == "execve" or path.startswith(b"/") or dirfd == AT_FDCWD:
        return path
    return f"/dev/fd/{dirfd}".encode() + (b"/" + path if path else b"")


# Links in the agent's view whose target only the holder's own /proc entries name.
_OWN_LINKS = (("/dev/fd/", "fd/"), ("/proc/self/", ""), ("/proc/thread-self/", "task/{tid}/"))


def _magic_target(tid: int, path: str) -> str | None:
    """The file an exec through a /proc or /dev/fd link runs, as /proc/PID/exe will name it."""
    if not path.startswith(("/proc/", "/dev/fd/")):
        return None
    host = f"/proc/{tid}/root{path}"
    for prefix, own in _OWN_LINKS:
        if path.startswith(prefix):
            host = f"/proc/{tid}/{own.format(tid=tid)}{path[len(prefix):]}"
    try:
        return os.readlink(host)
    except OSError:
        return None  # nothing to add: an image that is not otherwise decided is killed


def _trapped(tid: int) -> bool:
    state, wchan = task_state(tid)
    return state in "Tt" or (state, wchan) == FROZEN_WCHAN


def _thread_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def _thread_group(tid: int) -> int:
    with open(f"/proc/{tid}/status", "rb") as status:
        for line in status:
            if line.startswith(b"Tgid:"):
                return int(line.split()[1])
    raise ProcessLookupError(tid)
