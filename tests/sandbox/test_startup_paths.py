"""Start-up work that a plain `faramesh-sandbox run` must not pay for (bench/bench_run.py measures it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sandbox import launch, traced
from sandbox.spec import SandboxSpec

ROOT = Path(__file__).resolve().parents[2]


def python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_run_command_imports_no_other_command():
    """Parsing a `run` command line loads launcher.run, and not the modules of ui, audit, doctor..."""
    out = python("import sys\nfrom launcher import cli\n"
                 "cli.build_parser(['run', '--policy', 'p.fpl', '--', 'true'])\n"
                 "print(' '.join(sorted(m for m in sys.modules if m in "
                 "{'launcher.run', 'launcher.ui', 'launcher.doctor', 'launcher.audit_cmd', "
                 "'launcher.approvals_cmd', 'launcher.policy_cmd', 'launcher.init_cmd'})))")
    assert out == "launcher.run"


def test_importing_policy_does_not_build_the_fpl_parser():
    """policy.parser loads the stored LALR tables: lark.Lark() is never constructed at import."""
    out = python("import lark\nbuilt = []\noriginal = lark.Lark.__init__\n"
                 "lark.Lark.__init__ = lambda self, *a, **k: (built.append(1), original(self, *a, **k))[1]\n"
                 "import policy\nprint(len(built), policy.parse('agent a {\\n  default permit\\n}\\n').agents[0].name)")
    assert out == "0 a"


def test_a_run_whose_execs_are_verified_never_runs_the_freezer_self_test():
    """launch() of /bin/true decides its exec with exec_verify.VerifiedExec: no self-test helper process."""
    out = python("from policy.decision import Decision, Effect\nfrom sandbox import freeze, traced\n"
                 "from sandbox.launch import launch\nfrom sandbox.spec import SandboxSpec\n"
                 "spec = SandboxSpec(argv=['/bin/true'], trapped=frozenset(r.name for r in traced.TABLE))\n"
                 "print(launch(spec, lambda call: Decision(Effect.PERMIT)), freeze._self_test_passed)")
    assert out == "0 False"


def test_the_same_spec_reuses_its_compiled_filter():
    """A second launch() of the same trapped set and kernel decisions reuses the BPF program."""
    spec = SandboxSpec(argv=["/bin/true"], trapped=frozenset(row.name for row in traced.TABLE),
                       kernel_decided={"fs/read": 0})
    first, second = launch._Run(spec), launch._Run(spec)
    launch._build_filter(first)
    launch._build_filter(second)
    assert first.program is second.program and len(first.program) % 8 == 0 and len(first.program) > 0
