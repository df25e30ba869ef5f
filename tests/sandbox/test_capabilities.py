"""A root agent runs without the capabilities of sandbox/capabilities.py, on every set-up path,
even when the launcher itself holds them inheritable or ambient (a service's AmbientCapabilities=)."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox import capabilities

pytestmark = pytest.mark.kernel
ROOT = Path(__file__).resolve().parents[2]
DROPPED = capabilities.mask_of(capabilities.to_drop(True))
CAP_CHOWN = 1 << 0

# Runs launch() with the agent printing its capability sets; argv[1] picks the set-up path.
DRIVER = """
import sys
from sandbox import agent_spawn, init_spawn, traced
from sandbox.launch import launch
from sandbox.spec import SandboxSpec
from policy.decision import Decision, Effect
if sys.argv[1] != "compiled init":
    init_spawn.available = lambda: False
if sys.argv[1] == "python stages":
    agent_spawn._spawn = None
spec = SandboxSpec(argv=sys.argv[2:] or ["grep", "^Cap", "/proc/self/status"],
                   trapped=frozenset(row.name for row in traced.TABLE))
sys.exit(launch(spec, lambda call: Decision(Effect.PERMIT, rule_id="permit")))
"""
PATHS = ["compiled init", "python init, agent set up in C", "python stages"]


@pytest.mark.parametrize("path", PATHS)
def test_a_root_agent_holds_none_of_the_dropped_capabilities(path):
    launched = subprocess.run(
        ["setpriv", "--inh-caps", "+sys_admin,+net_admin,+mknod", "--ambient-caps", "+net_admin", "--",
         sys.executable, "-c", DRIVER, path], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert launched.returncode == 0, launched.stderr
    sets = {name: int(value, 16) for name, value in (line.split(":\t") for line in launched.stdout.splitlines())}
    assert {name: sets[name] & DROPPED for name in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")} == dict.fromkeys(
        ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"), 0)
    assert sets["CapEff"] & CAP_CHOWN  # what root keeps


# In a root agent: real-time scheduling (a SCHED_FIFO spinner per CPU starves the host) and locked
# memory past RLIMIT_MEMLOCK, which CAP_SYS_NICE and CAP_IPC_LOCK would grant.
RT_AND_MLOCK = """
import ctypes, mmap, os
try:
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    print("SCHED_FIFO granted")
except PermissionError:
    print("SCHED_FIFO refused")
memory = mmap.mmap(-1, 1 << 20)
address = ctypes.addressof(ctypes.c_char.from_buffer(memory))
locked = ctypes.CDLL(None, use_errno=True).mlock(ctypes.c_void_p(address), ctypes.c_size_t(1 << 20)) == 0
print("mlock granted" if locked else "mlock refused")
"""


def _small_limits() -> None:  # no real-time priority, 64 KiB of locked memory: only the capabilities lift them
    resource.setrlimit(resource.RLIMIT_RTPRIO, (0, 0))
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (1 << 16, 1 << 16))


@pytest.mark.parametrize("path", PATHS)
def test_a_root_agent_gets_no_real_time_scheduling_nor_locked_memory(path):
    """CAP_SYS_NICE and CAP_IPC_LOCK are dropped, as a container runtime's default set does."""
    assert subprocess.run([sys.executable, "-c", RT_AND_MLOCK], capture_output=True, text=True,
                          preexec_fn=_small_limits).stdout == "SCHED_FIFO granted\nmlock granted\n"  # natively
    launched = subprocess.run([sys.executable, "-c", DRIVER, path, sys.executable, "-c", RT_AND_MLOCK],
                              capture_output=True, text=True, cwd=ROOT, timeout=60, preexec_fn=_small_limits)
    assert (launched.returncode, launched.stdout) == (0, "SCHED_FIFO refused\nmlock refused\n"), launched.stderr


def test_an_unprivileged_agent_has_nothing_to_drop():
    assert capabilities.to_drop(False) == []
    assert capabilities.agent_is_privileged(wants_user_namespace=True)


@pytest.mark.parametrize("held, privileged", [
    ({"CapPrm": "0", "CapInh": "0", "CapAmb": "0"}, False),
    ({"CapPrm": "0", "CapInh": "0", "CapAmb": "1000"}, True),  # CAP_NET_ADMIN ambient: survives the exec
    ({"CapPrm": "200000", "CapInh": "0", "CapAmb": "0"}, True),  # CAP_SYS_ADMIN permitted
    ({"CapPrm": "400", "CapInh": "0", "CapAmb": "400"}, False),  # CAP_NET_BIND_SERVICE: kept anyway
])
def test_a_non_root_launcher_holding_a_dropped_capability_drops_it(monkeypatch, held, privileged):
    """Not root and no user namespace: the agent still loses what the launcher would hand on."""
    monkeypatch.setattr(capabilities.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(capabilities._procstatus, "status_fields", lambda pid: held)
    assert capabilities.agent_is_privileged(wants_user_namespace=False) is privileged


def test_the_compiled_receiver_still_answers_a_root_agent(tmp_path, monkeypatch, capfd):
    """The supervisor acts with the agent's capabilities in effect, so repeated reads of a root agent
    (which holds fewer capabilities than the launcher) are still answered in compiled code, and the
    launcher's own thread has its capabilities back afterwards."""
    from launcher.run import kernel_decided
    import policy
    from sandbox import _libc_fs, fastpath, traced
    from sandbox.launch import launch
    from sandbox.spec import SandboxSpec

    (tmp_path / "note").write_text("x")
    engine = policy.Engine([policy.load_policy(
        'agent a {\n  default permit\n  deny fs/read when args.path endsWith "/secret"\n}\n', "p.fpl")],
        policy.SessionStore())

    def decide(call):
        return engine.decide(call)
    decide.decision_keys = engine.decision_keys
    answered_in_c = []
    records = fastpath.FastOpens.records
    monkeypatch.setattr(fastpath.FastOpens, "records",
                        lambda self, session: answered_in_c.extend(found := records(self, session)) or found)
    spec = SandboxSpec(argv=["sh", "-c", f"for i in $(seq 50); do cat {tmp_path}/note; done"],
                       trapped=frozenset(row.name for row in traced.TABLE), kernel_decided=kernel_decided(engine),
                       fast_repeats=True)
    before = _libc_fs.get_effective_caps()
    assert launch(spec, decide, audit=lambda record: None) == 0
    assert capfd.readouterr().out == "x" * 50
    assert len([r for r in answered_in_c if r["args"].get("path") == f"{tmp_path}/note"]) >= 40
    assert _libc_fs.get_effective_caps() == before


def test_a_root_launcher_is_refused_a_user_namespace():
    """As root a user namespace would map root to root, and the supervisor would lend the host's
    capabilities to an agent whose own hold only inside: launch() refuses it before any fork
    (namespaces only, with no supervisor, it is allowed: tests/sandbox/test_dns_stub.py)."""
    from sandbox.errors import SandboxError
    from sandbox.launch import launch
    from sandbox.spec import SandboxSpec

    with pytest.raises(SandboxError) as err:
        launch(SandboxSpec(argv=["true"], user_namespace=True), lambda call: None)
    assert err.value.stage == "user_namespace"
    assert err.value.render().startswith("cannot create user namespace: a user namespace is only for a launcher")
