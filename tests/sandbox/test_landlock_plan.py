"""landlock.plan: the policy's envelope as Landlock rights on directories, only ever widened."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox import _libc_landlock as ll
from sandbox import landlock
from sandbox.landlock import Bound, Floor

LOADER = os.path.realpath("/lib64/ld-linux-x86-64.so.2")
READ = ll.FS_READ_FILE | ll.FS_READ_DIR
MAKE_FILES = ll.FS_MAKE_REG | ll.FS_MAKE_CHAR | ll.FS_MAKE_BLOCK | ll.FS_MAKE_FIFO | ll.FS_MAKE_SOCK
NOTHING = Bound()


def floor(kernel_permitted=frozenset(), **bounds) -> Floor:
    """Every argument bounded to nothing unless given: ``fs_read_path=Bound(...)`` or None for anything."""
    found = {key: NOTHING for key in landlock.ARGUMENTS}
    for name, bound in bounds.items():
        tool, _, key = name.rpartition("_")
        found[(tool.replace("_", "/", 1), key)] = bound
    return Floor(found, frozenset(kernel_permitted))


def prefixes(*values: str) -> Bound:
    return Bound(prefixes=frozenset(values))


def exact(*values) -> Bound:
    return Bound(exact=frozenset(values))


def test_prefix_that_is_not_a_directory_boundary_rounds_up_to_its_directory():
    """``/usr/li`` also matches ``/usr/lib64``: the rule goes on ``/usr``; ``/usr/lib/`` stays on ``/usr/lib``."""
    assert landlock.plan(floor(fs_read_path=prefixes("/usr/li")), 7).paths == {"/usr": READ}
    assert landlock.plan(floor(fs_read_path=prefixes("/usr/lib/")), 7).paths == {"/usr/lib": READ}


def test_missing_directory_rounds_up_to_the_nearest_existing_one(tmp_path):
    """A prefix under a directory that does not exist yet is ruled by its nearest existing ancestor."""
    found = landlock.plan(floor(fs_write_path=prefixes(f"{tmp_path}/later/out/")), 7)
    assert found.paths == {str(tmp_path): ll.FS_WRITE_FILE | ll.FS_TRUNCATE | MAKE_FILES}


def test_exact_file_is_ruled_by_its_directory():
    """An exact path becomes its directory, which also covers creating it (make rights sit on the parent)."""
    found = landlock.plan(floor(fs_write_path=exact("/tmp/out.txt")), 7)
    assert found.paths == {"/tmp": ll.FS_WRITE_FILE | ll.FS_TRUNCATE | MAKE_FILES}


def test_directory_a_permitted_call_can_remove_is_ruled_by_its_parent(tmp_path):
    """Rules stick to inodes: if the policy lets the agent delete ``data``, its rule moves up to ``data``'s parent."""
    (tmp_path / "data").mkdir()
    found = landlock.plan(floor(fs_read_path=prefixes(f"{tmp_path}/data/"),
                                fs_delete_path=exact(f"{tmp_path}/data")), 7)
    assert found.paths == {str(tmp_path): READ | ll.FS_REMOVE_FILE | ll.FS_REMOVE_DIR}


def test_exec_grants_read_and_the_program_loader():
    """execve opens the file for reading too, and the kernel opens the ELF interpreter."""
    found = landlock.plan(floor(shell_exec_path=prefixes("/opt/")), 7)
    assert found.paths == {"/opt": ll.FS_EXECUTE | ll.FS_READ_FILE, LOADER: ll.FS_EXECUTE | ll.FS_READ_FILE}


def test_exact_script_adds_its_interpreter(tmp_path):
    """An exact executable's #! interpreter is allowed to execute as well (the kernel runs it)."""
    script = tmp_path / "run.sh"
    script.write_text("#!/usr/bin/dash -e\necho hi\n")
    found = landlock.plan(floor(shell_exec_path=exact(str(script))), 7)
    both = ll.FS_EXECUTE | ll.FS_READ_FILE
    assert found.paths == {str(tmp_path): both, "/usr/bin/dash": both, LOADER: both}


def test_unbounded_right_is_not_handled():
    """A right some rule can permit anywhere stays unhandled, so the floor cannot refuse it."""
    found = landlock.plan(floor(fs_read_path=None), 7)
    assert found.fs_handled & READ == 0
    assert found.notes == ["not handled, a rule can permit them anywhere: read_file, read_dir"]


def test_kernel_decided_rename_leaves_the_filesystem_unhandled():
    """A rename the filter allows by itself runs in the agent, where Landlock's refer rule could refuse it."""
    found = landlock.plan(floor(kernel_permitted={"fs/rename"}, fs_rename_path=None, fs_rename_dest=None), 7)
    assert (found.fs_handled, found.paths) == (0, {})
    assert found.notes == ["filesystem rights not handled: fs/rename run in the agent unchecked"]


def test_refer_is_handled_with_everything_else_and_granted_where_moves_are_permitted():
    """REFER counts as handled whenever any fs right is, so it is granted on the move envelope."""
    found = landlock.plan(floor(fs_rename_path=prefixes("/tmp/"), fs_rename_dest=prefixes("/tmp/")), 7)
    assert found.fs_handled & ll.FS_REFER == ll.FS_REFER
    assert found.paths == {"/tmp": ll.FS_REFER | MAKE_FILES | ll.FS_MAKE_SYM | ll.FS_MAKE_DIR
                           | ll.FS_REMOVE_FILE | ll.FS_REMOVE_DIR}  # /tmp itself can never be moved


def test_ports_become_tcp_rules_and_an_unbounded_bind_stays_open():
    """Connect ports come from the envelope; bind is unhandled when any port can be permitted."""
    found = landlock.plan(floor(net_connect_port=exact(80, 443, "443", 70000), net_listen_port=None), 7)
    assert (found.net_handled, found.ports) == (ll.NET_CONNECT_TCP, {80: ll.NET_CONNECT_TCP, 443: ll.NET_CONNECT_TCP})


def test_older_abi_plans_only_what_it_offers():
    """ABI 3 has no TCP rules and no scopes; the plan says so."""
    found = landlock.plan(floor(), 3)
    assert (found.net_handled, found.scoped, found.fs_handled & ll.FS_IOCTL_DEV) == (0, 0, 0)
    assert found.notes == ["ABI 3: no signal or abstract-socket scoping (needs ABI 6)",
                           "ABI 3: no TCP port rules (needs ABI 4)"]


def test_interpreters_follow_the_kernel():
    """#! lines name interpreters (recursively), ELF files their PT_INTERP, anything else nothing."""
    assert landlock.interpreters("/usr/bin/true") == ["/lib64/ld-linux-x86-64.so.2"]
    assert landlock.interpreters("/etc/hostname") == []
    assert landlock.interpreters("/nonexistent/program") == []


def test_run_log_names_what_is_applied_or_why_not():
    """The run log lists each rule, or says Landlock is unavailable and the supervisor works alone."""
    found = landlock.plan(floor(fs_read_path=prefixes("/etc/"), net_connect_port=exact(443)), 7)
    lines = landlock.describe(found)
    assert "  Landlock allows read_file, read_dir beneath /etc" in lines
    assert "  Landlock TCP ports allowed: 443" in lines
    assert landlock.describe(None, "Landlock is not available") == [
        "Landlock floor not applied: Landlock is not available; the supervisor alone enforces the policy"]


SEGMENTS = ["a", "b", "ab", "c"]


@pytest.fixture(scope="module")
def plan_tree(tmp_path_factory) -> str:
    """A small real directory tree (module-scoped: hypothesis reruns the test body many times)."""
    base = tmp_path_factory.mktemp("plan-tree")
    for directory in ("a/b", "ab", "c/a"):
        (base / directory).mkdir(parents=True)
    return str(base.resolve())


@settings(max_examples=150, deadline=None)
@given(values=st.lists(st.tuples(st.booleans(), st.lists(st.sampled_from(SEGMENTS), max_size=3), st.booleans()),
                       min_size=1, max_size=4),
       removed=st.lists(st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=2), max_size=2),
       probes=st.lists(st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=4), min_size=1, max_size=6))
def test_every_path_in_the_envelope_lies_beneath_a_granting_rule(plan_tree, values, removed, probes):
    """For random prefixes, exact paths and deletable directories, each matching path (and its
    parent) is beneath a rule granting the right: widening only."""
    root = plan_tree
    joined = [(is_prefix, root + "/" + "/".join(parts) + ("/" if slash and parts else ""))
              for is_prefix, parts, slash in values]
    bound = Bound(frozenset(v for p, v in joined if p), frozenset(v.rstrip("/") or "/" for p, v in joined if not p))
    deletable = exact(*(root + "/" + "/".join(parts) for parts in removed))
    found = landlock.plan(floor(fs_write_path=bound, fs_delete_path=deletable), 7)
    granting = [path for path, rights in found.paths.items() if rights & ll.FS_MAKE_REG]
    for parts in probes:
        probe = root + "/" + "/".join(parts)
        if probe in bound.exact or any(probe.startswith(p) for p in bound.prefixes):
            parent = os.path.dirname(probe)
            assert any(d == "/" or parent == d or parent.startswith(d + "/") for d in granting), (probe, found.paths)
