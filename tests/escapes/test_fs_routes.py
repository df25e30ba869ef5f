"""Reaching a denied file by another syscall or another name: legacy and alternate open calls,
`..`, symlinks, /proc magic links, dangling symlinks, hard links and renames, attribute calls on
a read-only descriptor, renames over or swapping a protected file, device nodes."""

from __future__ import annotations

import os
import stat

import pytest

from tests.escapes.conftest import DENY_SECRET, PERMIT_ALL, SECRET, native, sandboxed

pytestmark = pytest.mark.kernel
READ_SYSCALLS = ["open", "openat", "openat2", "fdpath", "dirfd"]
EACCES = 13
ELOOP = 40


def test_every_open_syscall_is_decided(cbin, secret, tmp_path):
    """open, openat, openat2, an O_PATH reopen via /proc/self/fd and a dirfd-relative openat all hit the policy."""
    probe = cbin("fs_open")
    script = f'for how in {" ".join(READ_SYSCALLS)}; do {probe} $how {secret}; done'
    assert native(["sh", "-c", script]).lines() == {f"{how}:0": f"read:{SECRET}" for how in READ_SYSCALLS}
    run = sandboxed(DENY_SECRET, ["sh", "-c", script], tmp_path)
    assert run.lines() == {f"{how}:0": f"errno:{EACCES}" for how in READ_SYSCALLS}, run.explain()
    # open, openat, openat2, the O_PATH openat (refused before any /proc reopen), the dirfd openat
    assert sorted((r["syscall"], r["args"]["path"], r["reason_code"]) for r in run.denials("fs/read")) == [
        (syscall, str(secret), "FPL_STRICT_DENY") for syscall in ("open", "openat", "openat", "openat", "openat2")]


@pytest.mark.parametrize("how", ["creat", "write"])
def test_creating_a_denied_file_is_refused(cbin, tmp_path, how):
    """creat(2) and openat(O_CREAT) of a denied name create it natively, never in the sandbox."""
    target = tmp_path / "native" / "secret.txt"
    target.parent.mkdir()
    assert native([cbin("fs_open"), how, target]).stdout == f"{how}:0=wrote\n"
    target = tmp_path / "secret.txt"
    run = sandboxed(DENY_SECRET, [cbin("fs_open"), how, target], tmp_path)
    assert run.stdout == f"{how}:0=errno:{EACCES}\n", run.explain()
    assert not target.exists()
    assert [(r["tool"], r["args"]["path"], r["reason_code"]) for r in run.denials("fs/")] == [
        ("fs/write", str(target), "FPL_STRICT_DENY")]


def tricky_names(tmp_path, secret) -> list[str]:
    """Names that reach secret.txt without ending in it."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "innocent.txt").symlink_to("secret.txt")
    (tmp_path / "alias").symlink_to(".")
    (tmp_path / "rootlink").symlink_to("/")
    return ["sub/../secret.txt", "innocent.txt", "alias/secret.txt", f"rootlink{secret}",
            f"{tmp_path}/./sub/..//secret.txt"]


def test_dotdot_and_symlinks_resolve_to_the_denied_file(cbin, secret, tmp_path):
    """`..`, file and directory symlinks and a symlink to / are decided on the resolved path."""
    names = tricky_names(tmp_path, secret)
    argv = [cbin("fs_open"), "openat", *names]
    assert native(argv, cwd=tmp_path).lines() == {f"openat:{i}": f"read:{SECRET}" for i in range(len(names))}
    run = sandboxed(DENY_SECRET, argv, tmp_path)
    assert run.lines() == {f"openat:{i}": f"errno:{EACCES}" for i in range(len(names))}, run.explain()
    assert [(r["args"]["path"], r["reason_code"]) for r in run.denials("fs/read")] == [
        (str(secret), "FPL_STRICT_DENY")] * len(names)


MAGIC_LINKS = ["/proc/self/root{secret}", "/proc/self/cwd/secret.txt", "/proc/thread-self/cwd/secret.txt",
               "/dev/fd/{dirfd}/secret.txt"]


def test_proc_magic_links_are_refused(cbin, secret, tmp_path):
    """/proc/*/root, /proc/*/cwd and an fd link to a directory reach the secret natively; the supervisor's
    resolver refuses every magic link but the agent's own /proc/PID/fd/N (ELOOP, sandbox/_resolve.py)."""
    names = [name.format(secret=secret, dirfd=3) for name in MAGIC_LINKS]
    script = f'exec 3<{tmp_path}; exec {cbin("fs_open")} openat "$@"'
    argv = ["sh", "-c", script, "fs_open", *names]
    assert native(argv, cwd=tmp_path).lines() == {f"openat:{i}": f"read:{SECRET}" for i in range(len(names))}
    run = sandboxed(DENY_SECRET, argv, tmp_path)
    expected = {f"openat:{i}": f"errno:{ELOOP}" for i in range(len(names))}
    expected[f"openat:{len(names) - 1}"] = f"errno:{EACCES}"  # /dev/fd/3/... is the agent's own fd: decided
    assert run.lines() == expected, run.explain()
    assert [(r["args"]["path"], r["reason_code"]) for r in run.denials("fs/read")] == [
        (str(secret), "FPL_STRICT_DENY")]


def test_write_through_a_dangling_symlink_is_decided_on_its_target(cbin, tmp_path):
    """A dangling `notes.txt -> secret.txt` creates the secret natively; in the sandbox the target is decided."""
    for where in ("native", "boxed"):
        (tmp_path / where).mkdir()
        (tmp_path / where / "notes.txt").symlink_to("secret.txt")
    assert native([cbin("fs_open"), "write", tmp_path / "native" / "notes.txt"]).stdout == "write:0=wrote\n"
    assert (tmp_path / "native" / "secret.txt").read_text() == "pwned\n"
    run = sandboxed(DENY_SECRET, [cbin("fs_open"), "write", tmp_path / "boxed" / "notes.txt"], tmp_path)
    assert run.stdout == f"write:0=errno:{EACCES}\n", run.explain()
    assert not (tmp_path / "boxed" / "secret.txt").exists()
    assert [(r["tool"], r["args"]["path"]) for r in run.denials("fs/")] == [
        ("fs/write", str(tmp_path / "boxed" / "secret.txt"))]


READ_ONLY_DENY = ('agent a {\n  default permit\n'
                  '  deny! fs/read when args.path endsWith "/secret.txt" reason: "do not read the secret"\n}\n')


@pytest.mark.parametrize("new_name", ["ln secret.txt alias.txt", "mv secret.txt alias.txt"])
def test_a_new_name_for_a_read_denied_file_does_not_unlock_it(tmp_path, secret, new_name):
    """Under `deny! fs/read` of the secret, a hard link or rename to another name must not make it readable."""
    script = f"{new_name}; cat alias.txt"
    (tmp_path / "native").mkdir()
    (tmp_path / "native" / "secret.txt").write_text(SECRET + "\n")
    assert native(["sh", "-c", script], cwd=tmp_path / "native").stdout == SECRET + "\n"
    run = sandboxed(READ_ONLY_DENY, ["sh", "-c", script], tmp_path)
    assert SECRET not in run.stdout, run.explain()
    assert run.denials("fs/") != [], run.explain()
    assert {r["reason_code"] for r in run.denials("fs/")} == {"FPL_STRICT_DENY"}


def test_open_by_handle_at_is_refused(cbin, secret, tmp_path):
    """name_to_handle_at + open_by_handle_at read the secret natively by inode; in the sandbox both are EPERM."""
    assert native([cbin("by_handle"), secret]).stdout == f"read={SECRET}\n"
    run = sandboxed(DENY_SECRET, [cbin("by_handle"), secret], tmp_path)
    assert (run.status, run.stdout) == (1, "name_to_handle_at=-1 errno=1\nopen_by_handle_at=-1 errno=1\n"), \
        run.explain()
    assert os.path.exists(secret)


@pytest.mark.parametrize("script", ["ln secret.txt alias.txt; cat alias.txt", "mv secret.txt alias.txt; cat alias.txt"])
def test_an_outright_permit_of_links_and_renames_does_not_unlock_it(tmp_path, secret, script):
    """The policy permits fs/link and fs/rename outright (default permit) but not reading the secret:
    a plain `run` still sends links and renames to the supervisor, which decides their source's read."""
    run = sandboxed(READ_ONLY_DENY, ["sh", "-c", script], tmp_path, kernel=True)
    assert SECRET not in run.stdout, run.explain()
    tool = {"ln": "fs/link", "mv": "fs/rename"}[script.split()[0]]
    assert [(r["tool"], r["args"]["path"], r["reason_code"]) for r in run.denials(tool)] == [
        (tool, str(secret), "FPL_STRICT_DENY")], run.explain()


WRITE_DENY = ('agent a {\n  default permit\n'
              '  deny! fs/write when args.path endsWith "/secret.txt" reason: "the secret stays as it is"\n}\n')


@pytest.mark.parametrize("policy_text, how", [(WRITE_DENY, "plain"), (WRITE_DENY, "exchange"),
                                              (READ_ONLY_DENY, "exchange")])
def test_a_rename_cannot_replace_or_swap_out_a_protected_file(cbin, tmp_path, secret, policy_text, how):
    """A rename over the secret replaces it, RENAME_EXCHANGE gives it the decoy's name: natively both
    work; in the sandbox the destination is decided too (fs/write; fs/read for an exchange)."""
    (tmp_path / "native").mkdir()
    for where in (tmp_path, tmp_path / "native"):
        (where / "decoy.txt").write_text("decoy\n")
    (tmp_path / "native" / "secret.txt").write_text(SECRET + "\n")
    argv = [cbin("rename2"), how, "decoy.txt", "secret.txt"]
    assert native(argv, cwd=tmp_path / "native").stdout == "rename=ok\n"
    assert (tmp_path / "native" / "secret.txt").read_text() == "decoy\n"
    run = sandboxed(policy_text, argv, tmp_path)
    assert run.stdout == f"rename=errno:{EACCES}\n", run.explain()
    assert (secret.read_text(), (tmp_path / "decoy.txt").read_text()) == (SECRET + "\n", "decoy\n")
    assert [(r["tool"], r["args"]["path"], r["args"]["dest"], r["reason_code"]) for r in run.denials("fs/")] == [
        ("fs/rename", str(tmp_path / "decoy.txt"), str(secret), "FPL_STRICT_DENY")], run.explain()


def test_attribute_changes_through_a_read_only_descriptor_are_decided(cbin, tmp_path, secret):
    """fchmod, fchown, fsetxattr and fremovexattr on a descriptor opened for reading change the file
    natively; in the sandbox each is decided as fs/write of the file: refused for the secret,
    performed for another file."""
    other = tmp_path / "other.txt"
    other.write_text("other\n")
    (tmp_path / "native").mkdir()
    copy = tmp_path / "native" / "secret.txt"
    copy.write_text(SECRET + "\n")
    for path in (secret, other, copy):
        os.chmod(path, 0o644)
        os.setxattr(path, "user.probe", b"1")
    calls = ("fchmod", "fchown", "fsetxattr", "fremovexattr")
    assert native([cbin("fd_attrs"), copy]).lines() == dict.fromkeys(calls, "ok")
    assert (stat.S_IMODE(copy.stat().st_mode), copy.stat().st_uid) == (0o777, 4242)
    run = sandboxed(WRITE_DENY, ["sh", "-c", f"{cbin('fd_attrs')} {secret}; {cbin('fd_attrs')} {other}"], tmp_path)
    assert run.stdout.splitlines() == [f"{call}=errno:{EACCES}" for call in calls] + [f"{call}=ok" for call in calls], \
        run.explain()
    assert (stat.S_IMODE(secret.stat().st_mode), secret.stat().st_uid) == (0o644, 0)
    assert os.listxattr(secret) == ["user.probe"]
    assert (stat.S_IMODE(other.stat().st_mode), other.stat().st_uid, os.listxattr(other)) == (0o777, 4242, ["user.added"])
    assert sorted(r["syscall"] for r in run.denials("fs/write")) == sorted(calls), run.explain()


@pytest.mark.parametrize("kernel", [False, True], ids=["supervisor", "kernel"])
def test_device_nodes_cannot_be_made(tmp_path, kernel):
    """A root agent may make a FIFO, never a block or character device node (a disk's node would
    bypass every path rule), also when the policy permits fs/write outright."""
    script = "mknod fifo p; echo fifo=$?; mknod disk b 7 0; echo block=$?; mknod mem c 1 1; echo char=$?"
    (tmp_path / "native").mkdir()
    made = native(["sh", "-c", script], cwd=tmp_path / "native").lines()
    for name in ("fifo", "disk", "mem"):  # a disk's and /dev/mem's node are not left lying about
        (tmp_path / "native" / name).unlink(missing_ok=True)
    assert made == {"fifo": "0", "block": "0", "char": "0"}
    run = sandboxed(PERMIT_ALL, ["sh", "-c", script], tmp_path, kernel=kernel)
    assert run.lines() == {"fifo": "0", "block": "1", "char": "1"}, run.explain()
    assert "Operation not permitted" in run.stderr
    assert stat.S_ISFIFO((tmp_path / "fifo").stat().st_mode)
    assert not (tmp_path / "disk").exists() and not (tmp_path / "mem").exists()


RENAME_DIRS = """
import os, sys
for old, new in (("anc", "anc2"), ("free", "free2")):
    try:
        os.rename(old, new)
        print(f"{old}=ok")
    except OSError as err:
        print(f"{old}=errno:{err.errno}")
"""


def test_a_directory_rename_is_decided_on_everything_it_moves(tmp_path):
    """`deny fs/write` under anc/prot: renaming anc would give anc/prot/f another name, and
    renaming it back would put a file of the agent's there. With the agent frozen, every entry a
    directory carries is decided as a rename of its own: EXDEV when one is refused (mv then copies
    file by file, each decided), an atomic rename otherwise."""
    for where in (tmp_path, tmp_path / "native"):
        (where / "anc" / "prot").mkdir(parents=True)
        (where / "anc" / "prot" / "f").write_text("kept\n")
        (where / "free" / "sub").mkdir(parents=True)
        (where / "free" / "sub" / "g").write_text("g\n")
    policy_text = ('agent a {\n  default permit\n'
                   f'  deny fs/write when args.path startsWith "{tmp_path}/anc/prot" reason: "kept as it is"\n}}\n')
    argv = ["python3", "-c", RENAME_DIRS]
    assert native(argv, cwd=tmp_path / "native").lines() == {"anc": "ok", "free": "ok"}
    moved_inode = (tmp_path / "free").stat().st_ino
    run = sandboxed(policy_text, argv, tmp_path)
    assert run.lines() == {"anc": "errno:18", "free": "ok"}, run.explain()
    assert (tmp_path / "anc" / "prot" / "f").read_text() == "kept\n"
    assert (tmp_path / "free2").stat().st_ino == moved_inode  # renamed whole, not copied
    script = f"mv anc anc2; echo pwned > anc2/prot/f; mv anc2 anc; cat {tmp_path}/anc/prot/f"
    run = sandboxed(policy_text, ["sh", "-c", script], tmp_path)
    assert "pwned" not in run.stdout, run.explain()


def test_a_symlink_is_a_write_at_its_own_path(tmp_path):
    """No symlink is made at a name that may not be written (a planted .bashrc or git hook)."""
    policy_text = ('agent a {\n  default permit\n'
                   f'  deny fs/write when args.path startsWith "{tmp_path}/hooks/" reason: "no hooks"\n}}\n')
    (tmp_path / "hooks").mkdir()
    run = sandboxed(policy_text, ["sh", "-c", "ln -s /tmp/evil hooks/pre-commit; echo made=$?; ln -s x ok; echo ok=$?"],
                    tmp_path)
    assert run.lines() == {"made": "1", "ok": "0"}, run.explain()
    assert not os.path.lexists(tmp_path / "hooks" / "pre-commit")
    assert [(r["tool"], r["args"]["path"]) for r in run.denials("fs/")] == [("fs/link", f"{tmp_path}/hooks/pre-commit")]


def test_a_rename_deletes_its_old_name(tmp_path):
    """Under `deny fs/delete` of keep.txt, moving it away (then deleting it elsewhere) is refused."""
    policy_text = ('agent a {\n  default permit\n'
                   '  deny fs/delete when args.path endsWith "/keep.txt" reason: "keep it"\n}\n')
    (tmp_path / "keep.txt").write_text("keep\n")
    run = sandboxed(policy_text, ["sh", "-c", "mv keep.txt gone.txt; echo mv=$?; rm -f gone.txt"], tmp_path)
    assert run.lines() == {"mv": "1"}, run.explain()
    assert (tmp_path / "keep.txt").read_text() == "keep\n"


def test_a_moved_directorys_entries_meet_the_rename_rules_too(tmp_path):
    """`deny fs/rename` under d/sub/: moving d/sub away would rename d/sub/f without a decision
    naming it. Each entry is decided as a rename of its own: refused, and recorded, so EXDEV."""
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "sub" / "f").write_text("f\n")
    policy_text = ('agent a {\n  default permit\n'
                   f'  deny fs/rename when args.path startsWith "{tmp_path}/d/sub/" reason: "stays put"\n}}\n')
    script = "import os\ntry:\n    os.rename('d/sub', 'sub2'); print('moved=ok')\nexcept OSError as err:\n    print(f'moved=errno:{err.errno}')\n"
    run = sandboxed(policy_text, ["python3", "-c", script], tmp_path)
    assert run.lines() == {"moved": "errno:18"}, run.explain()
    assert (tmp_path / "d" / "sub" / "f").exists()
    assert [(r["tool"], r["args"]["path"], r["args"]["dest"], r["reason_code"]) for r in run.denials("fs/")] == [
        ("fs/rename", f"{tmp_path}/d/sub/f", f"{tmp_path}/sub2/f", "RULE_DENY")], run.explain()
