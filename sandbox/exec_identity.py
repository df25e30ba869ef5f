"""What an exec will run, whatever it was called: the program behind a copy, a rename, a hard
link, a memfd, the dynamic loader or a shebang.

A policy such as ``deny! shell/* when args.program == "curl"`` must not be dodged by
``cp /usr/bin/curl /tmp/fetch``. So ``program`` is the name of the system program the file *is*:
an index of the system directories, built when the sandbox starts (before the agent can write
anything), maps each path to its name, and each file size to the files of that size; a file
that is not a listed, unchanged path but has a known size is compared by SHA-256. A file that
matches nothing keeps its own basename.

The kernel runs more than the file named when the file is a script (``#!`` names an
interpreter, up to four levels) or when the file is the dynamic loader (its first non-option
argument is the program it loads and runs). Those are returned by ``also_runs`` so the
supervisor decides them too: an exec is permitted only when every program it runs is.

Reads happen while the agent is frozen (or before a verified exec), through
/proc/PID/root, so the agent's view is what is identified."""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import re
import stat
import threading
import time
from typing import NamedTuple

SYSTEM_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin", "/lib64",
               "/usr/lib64", "/lib", "/usr/lib")  # the last ones hold the dynamic loader
LOADER_NAME = re.compile(r"(ld-linux[-\w.]*|ld-musl-[\w.]+|ld)\.so(\.\d+)*")
LOADER_OPTIONS_WITH_VALUE = frozenset({"--library-path", "--preload", "--audit", "--argv0", "--inhibit-rpath",
                                       "--glibc-hwcaps-prepend", "--glibc-hwcaps-mask"})
MAX_INTERPRETER_DEPTH = 4  # the kernel's BINPRM_MAX_RECURSION
SHEBANG_MAX = 256  # the kernel reads at most this much of the #! line
HASH_CHUNK = 1 << 20
CLOCK_REALTIME_COARSE = 5  # linux/time.h; file times come from this clock (Python 3.11 has no name for it)


class ProgramIndex:
    """The system programs as they were when the sandbox started; ``identify`` names an open file.

    At start only the names are listed (each directory once, however many of SYSTEM_DIRS lead
    to it: about 1 ms), before the agent runs anything. A file that is one of those names and
    unchanged since the start (its ctime, which a write, chmod, link or rename updates and nobody
    can set back, is older) is that program. Anything else is compared by content with the listed
    programs of the same size (the sizes are read on first need)."""

    def __init__(self, root: str = "/"):
        self.root = root.rstrip("/")
        # The coarse wall clock, the one file times come from: a file changed after this, even
        # within the same clock tick, has a ctime of at least ``started``.
        self.started = time.clock_gettime_ns(CLOCK_REALTIME_COARSE)
        self._entries: dict[str, frozenset[str]] = {}  # system directory -> its names at start
        listed: dict[tuple[int, int], frozenset[str]] = {}
        for directory in SYSTEM_DIRS:
            try:
                info = os.stat(self.root + directory)
                identity = (info.st_dev, info.st_ino)
                if identity not in listed:
                    listed[identity] = frozenset(os.listdir(self.root + directory))
            except OSError:
                continue
            self._entries[directory] = listed[identity]
        self._by_size: dict[int, list[tuple[str, str]]] | None = None  # size -> [(path, name)]
        self._digests: dict[tuple, str] = {}  # system program identity -> sha256
        self._lock = threading.Lock()

    def listed(self, path: str) -> str | None:
        """The program name of ``path`` if it was a system program's path at start."""
        directory, _, name = path.rpartition("/")
        if name not in self._entries.get(directory, ()):
            return None
        if directory.endswith("lib") and not LOADER_NAME.fullmatch(name):
            return None  # of the library directories only the loader runs as a program
        return name

    def identify(self, fd: int, path: str, fallback: str,
                 info: os.stat_result | None = None) -> tuple[str, str | None]:
        """(program name, sha256 or None when not needed) of the open file ``fd`` at ``path``
        (``info``: its fstat, when the caller has it).

        The file's own content is hashed afresh on every call, never taken from a cache keyed
        by its stat: a write through a shared writable mapping dirtied before our fstat changes
        the content without touching ctime or mtime. Only the system programs' digests are
        cached (the agent cannot write them)."""
        if info is None:
            info = os.fstat(fd)
        known = self.listed(path)
        if known is not None and info.st_ctime_ns < self.started:
            return known, None
        candidates = self._sizes().get(info.st_size, [])
        if not candidates:
            return fallback, None
        digest = _sha256(fd)
        for candidate, name in candidates:
            try:
                if self._digest_path(self.root + candidate) == digest:
                    return name, digest
            except OSError:
                continue
        return fallback, digest

    def _sizes(self) -> dict[int, list[tuple[str, str]]]:
        with self._lock:
            if self._by_size is None:
                sizes: dict[int, list[tuple[str, str]]] = {}
                for directory, names in self._entries.items():
                    for name in names:
                        path = f"{directory}/{name}"
                        if self.listed(path) is None:
                            continue
                        try:
                            info = os.stat(self.root + path)
                        except OSError:
                            continue
                        if stat.S_ISREG(info.st_mode) and info.st_mode & 0o111:
                            sizes.setdefault(info.st_size, []).append((path, name))
                self._by_size = sizes
            return self._by_size

    def _digest_path(self, path: str) -> str:
        """The sha256 of system program ``path``, cached by its identity and times."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            info = os.fstat(fd)
            key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
            with self._lock:
                cached = self._digests.get(key)
            if cached is None:
                cached = _sha256(fd)
                with self._lock:
                    self._digests[key] = cached
            return cached
        finally:
            os.close(fd)


def _sha256(fd: int) -> str:
    digest, offset = hashlib.sha256(), 0
    while chunk := os.pread(fd, HASH_CHUNK, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()


def open_executable(host_path: str) -> int:
    """The file an exec names, opened read-only as the supervisor (root) sees it."""
    return os.open(host_path, os.O_RDONLY | os.O_CLOEXEC)


def shebang(head: bytes) -> tuple[str, list[str]] | None:
    """(interpreter, [optional argument]) from a file's first SHEBANG_MAX bytes (a ``#!``
    line), or None for a binary."""
    if not head.startswith(b"#!"):
        return None
    line = head[2:].split(b"\n", 1)[0].strip(b" \t")
    if not line:
        return None
    interpreter, _, rest = line.replace(b"\t", b" ").partition(b" ")
    rest = rest.strip(b" ")
    return os.fsdecode(interpreter), ([os.fsdecode(rest)] if rest else [])


def loader_target(argv: list[str]) -> tuple[str, list[str]] | None:
    """(program, its argv) that the dynamic loader will run, from the loader's own argv."""
    index = 1
    while index < len(argv):
        word = argv[index]
        if word in LOADER_OPTIONS_WITH_VALUE:
            index += 2
        elif word.startswith("--"):
            if word in ("--list", "--verify", "--help", "--version", "--list-tunables", "--list-diagnostics"):
                return None  # runs nothing
            index += 1
        else:
            return word, argv[index:]
    return None


def _base_for(path: str, args: dict) -> str:
    """Where a path an exec also runs is resolved from: the task's cwd for a relative one, which
    must then be known (refused otherwise: from "/" it would name another file)."""
    if path.startswith("/"):
        return "/"
    if not args.get("cwd"):
        raise OSError(errno.EACCES, f"{path!r} is relative and the task's cwd is unknown")
    return args["cwd"]


def is_loader(program: str) -> bool:
    return bool(LOADER_NAME.fullmatch(program))


class Examined(NamedTuple):
    """An exec'd file as the decision saw it: its name by content, the stat the name was
    derived from (VerifiedExec compares the executed file with it) and its first bytes."""
    program: str
    sha256: str | None
    info: os.stat_result
    head: bytes


class ExecIdentity:
    """Names exec'd files and lists what else an exec runs, for one sandbox. Construct it
    before the agent runs its own code: it lists the system programs (about 1 ms, while the
    agent is still being set up)."""

    def __init__(self, root: str = "/"):
        self._index = ProgramIndex(root)

    @property
    def started(self) -> int:
        """When the system programs were listed (CLOCK_REALTIME_COARSE ns): a file whose ctime is
        older is unchanged since."""
        return self._index.started

    def program(self, host_path: str, path: str, fallback: str) -> tuple[str, str | None, int]:
        """(program, sha256 or None, fd the caller closes) of the file at ``host_path``, which
        the agent calls ``path``; OSError (the exec is refused) if it cannot be read."""
        fd = open_executable(host_path)
        try:
            name, digest = self._index.identify(fd, path, fallback)
        except BaseException:
            os.close(fd)
            raise
        return name, digest, fd

    def examine(self, host_path: str, path: str, fallback: str) -> Examined:
        """The file at ``host_path`` (the agent's ``path``), opened once: named, stat'ed and
        its head read from the same open file. OSError as ``program``."""
        fd = open_executable(host_path)
        try:
            info = os.fstat(fd)
            name, digest = self._index.identify(fd, path, fallback, info)
            return Examined(name, digest, info, os.pread(fd, SHEBANG_MAX, 0))
        finally:
            os.close(fd)

    def also_runs(self, args: dict, host_path: str, host_root: str, resolve, head: bytes | None = None) -> list[dict]:
        """The programs an exec with tool-call ``args`` (of the file at ``host_path``, whose
        first bytes are ``head`` when already read) runs besides that file: [{path, program,
        argv, via}], innermost interpreter last. ``resolve(path, base)`` resolves a path as
        the agent would, or raises OSError."""
        found: list[dict] = []
        path, program, argv = args["path"], args["program"], list(args["argv"])
        for _ in range(MAX_INTERPRETER_DEPTH + 1):
            if head is None:
                fd = open_executable(host_path)
                try:
                    head = os.pread(fd, SHEBANG_MAX, 0)
                finally:
                    os.close(fd)
            interp, head = shebang(head), None
            if interp is not None:
                interpreter, extra = interp
                # The kernel opens a relative interpreter from the exec'ing task's cwd, as the loader's target.
                via, path, argv = "shebang", resolve(interpreter, _base_for(interpreter, args)), \
                    [interpreter, *extra, path, *argv[1:]]
            elif is_loader(program) and (target := loader_target(argv)) is not None:
                if "/" not in target[0]:  # ld.so looks a bare name up as a library, not from the cwd
                    raise OSError(errno.EACCES, f"the loader's program {target[0]!r} names no path")
                via, path, argv = "loader", resolve(target[0], _base_for(target[0], args)), target[1]
            else:
                return found
            host_path = host_root + path
            program, digest, fd = self.program(host_path, path, posixpath.basename(path))
            os.close(fd)
            found.append({"path": path, "program": program, "argv": argv, "via": via,
                          **({"sha256": digest} if digest else {})})
        raise OSError(errno.ELOOP, "too many levels of interpreters")
