"""Syscalls the static filter refuses in the kernel, whatever the policy says: personality,
TIOCSTI, the keyrings, userfaultfd, fanotify, inode-flag ioctls, namespaces and mounts, chroot, a
second seccomp listener.

These refusals are not policy decisions: they leave no audit record, so each test asserts the
errno the kernel returned, after showing the same call succeeds natively (as root)."""

from __future__ import annotations

import os
import stat
import sys

import pytest

from tests.escapes.conftest import DENY_SECRET, PERMIT_ALL, SECRET, native, sandboxed

pytestmark = pytest.mark.kernel
EPERM, ENOSYS, EACCES, ENOKEY = "errno:1", "errno:38", "errno:13", "errno:126"

CASES = {  # probe -> (native answers, sandboxed answers)
    "personality": ({"query": "ok", "linux32": "ok", "addr_no_randomize": "ok", "read_implies_exec": "ok"},
                    {"query": "ok", "linux32": EPERM, "addr_no_randomize": EPERM, "read_implies_exec": EPERM}),
    "tiocsti": ({"tiocsti": "ok"}, {"tiocsti": EPERM}),
    "keyctl": ({"keyctl": "ok", "add_key": "ok", "request_key": ENOKEY},
               {"keyctl": EPERM, "add_key": EPERM, "request_key": EPERM}),
    "userfaultfd": ({"syscall": "ok", "device": "ok"}, {"syscall": EPERM, "device": EPERM}),
    # A root agent is the host's root for what no tool call names: the clock, the kernel log.
    "root_powers": ({"clock_settime": "ok", "syslog_read": "ok"}, {"clock_settime": EPERM, "syslog_read": EPERM}),
    # fanotify would open a file the agent may only read O_RDWR for it, on any event.
    "fanotify": ({"fanotify_init": "ok", "fanotify_mark": "ok"}, {"fanotify_init": EPERM, "fanotify_mark": EPERM}),
    # Inode flags and project attributes through a descriptor opened read-only.
    "chattr": ({"setflags": "ok", "fssetxattr": "ok", "setversion": "ok"},
               {"setflags": EPERM, "fssetxattr": EPERM, "setversion": EPERM}),
    # Root keeps a short set of capabilities (sandbox/capabilities.py): filesystem ioctls such as
    # FITRIM (and FIFREEZE, ext4's shutdown) are refused by the kernel on any descriptor.
    # (natively FITRIM's answer depends on the filesystem: EINVAL, EOPNOTSUPP; never EPERM for root)
    "root_caps": ({"cap_sys_admin": "yes", "cap_net_admin": "yes", "cap_mknod": "yes", "cap_chown": "yes"},
                  {"cap_sys_admin": "no", "cap_net_admin": "no", "cap_mknod": "no", "cap_chown": "yes",
                   "fitrim": EPERM}),
}


@pytest.fixture(scope="module")
def hardening_outcomes(cbin, tmp_path_factory):
    """(native, sandboxed) outcomes of one script running every probe of CASES (their keys differ)."""
    work = tmp_path_factory.mktemp("hard")
    # The agent's /dev has no userfaultfd: a node of it on a host filesystem is what it could reach.
    device = work / "userfaultfd"
    os.mknod(device, stat.S_IFCHR | 0o600, os.stat("/dev/userfaultfd").st_rdev)
    script = "".join(f"{cbin(probe)}{' ' + str(device) if probe == 'userfaultfd' else ''}\n" for probe in CASES)
    return native(["sh", "-c", script]), sandboxed(PERMIT_ALL, ["sh", "-c", script], work)


@pytest.mark.parametrize("probe", list(CASES))
def test_hardened_syscall_is_refused_by_the_filter(hardening_outcomes, probe):
    """The probe's calls succeed natively and fail in the sandbox with the filter's errno."""
    natively, boxed = CASES[probe]
    native_run, boxed_run = hardening_outcomes
    assert {key: native_run.lines().get(key) for key in natively} == natively
    assert boxed_run.status == 0, boxed_run.explain()
    assert {key: boxed_run.lines().get(key) for key in boxed} == boxed, boxed_run.explain()


def test_namespaces_and_mounts_cannot_be_changed_from_inside(cbin, tmp_path):
    """unshare, mount, setns and clone(CLONE_NEWPID) are EPERM, clone3 ENOSYS (so libc falls back to clone)."""
    target = tmp_path / "mnt"
    target.mkdir()
    calls = ["unshare_mount", "mount", "setns", "clone_newpid", "clone3_newpid", "unshare_user"]
    assert native([cbin("namespaces"), target]).lines() == dict.fromkeys(calls, "ok")
    run = sandboxed(PERMIT_ALL, [cbin("namespaces"), target], tmp_path)
    expected = {**dict.fromkeys(calls, EPERM), "clone3_newpid": ENOSYS}
    assert (run.status, run.lines()) == (0, expected), run.explain()


def test_nested_listener_and_own_filters_do_not_lift_mediation(cbin, secret, tmp_path):
    """A second NEW_LISTENER is EPERM; an allow-all filter of its own and PR_SET_DUMPABLE(0) change
    nothing: the denied read is still decided by the outer policy and audited."""
    assert native([cbin("nested_listener"), secret]).lines() == {
        "listener": "ok", "allow_filter": "ok", "dumpable": "ok", "read": SECRET}
    run = sandboxed(DENY_SECRET, [cbin("nested_listener"), secret], tmp_path)
    assert run.lines() == {"listener": EPERM, "allow_filter": "ok", "dumpable": "ok", "read": EACCES}, run.explain()
    assert [(r["tool"], r["args"]["path"], r["reason_code"]) for r in run.denials()] == [
        ("fs/read", str(secret), "FPL_STRICT_DENY")]


CHROOT_PROBE = """
import os, sys
vault = sys.argv[1]
try:
    os.chroot(vault)
except OSError as err:
    print("chroot=errno:%d" % err.errno)
    sys.exit(0)
print("chroot=ok")
print("read=" + open("/key").read().strip())
"""


def test_chroot_cannot_rename_a_denied_path(tmp_path):
    """chroot into a denied directory would make its files look like "/key" to every path rule;
    natively it reads the key, in the sandbox chroot is EPERM."""
    vault = tmp_path / "vault"
    vault.mkdir(mode=0o755)
    (vault / "key").write_text(SECRET + "\n")
    argv = [sys.executable, "-S", "-c", CHROOT_PROBE, vault]
    assert native(argv).lines() == {"chroot": "ok", "read": SECRET}
    policy = ('agent a {\n  default permit\n'
              f'  deny! fs/* when args.path startsWith "{vault}" reason: "the vault is off limits"\n}}\n')
    run = sandboxed(policy, argv, tmp_path)
    assert (run.status, run.lines()) == (0, {"chroot": EPERM}), run.explain()
