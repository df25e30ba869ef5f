"""``faramesh-sandbox learn [--policy BASE]... -o agent.fpl -- CMD``: run CMD permitting (and
recording) everything the base policies do not deny, then write a policy that permits exactly
what was observed (launcher/learn_writer.py; docs/learn.md)."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import tempfile
import threading

from launcher import run, term
from launcher.learn_writer import render_policy
from policy.decision import Decision, Effect

PERMIT_ALL = "agent learning {\n  default permit\n}\n"
RECORDED_ARGS = ("path", "dest", "cmd", "program", "host", "ip", "port", "family", "protocol", "type")


class Learner:
    """Wraps the base policy's decide(): denies stay denied (and are counted), the rest is
    permitted and recorded."""

    def __init__(self):
        self.calls: list[tuple[str, dict]] = []
        self.skipped: dict[str, int] = {}
        self._lock = threading.Lock()

    def wrap(self, decide):
        def learning(call) -> Decision:
            decision = decide(call)
            with self._lock:
                if decision.effect is Effect.DENY:
                    self.skipped[call.tool] = self.skipped.get(call.tool, 0) + 1
                    return decision
                self.calls.append((call.tool, {k: call.args[k] for k in RECORDED_ARGS if k in call.args}))
            return Decision(Effect.PERMIT, rule_id=decision.rule_id, reason_code="LEARNING",
                            reason="permitted and recorded by `learn`", policy_version=decision.policy_version)
        return learning


def add_arguments(parser: argparse.ArgumentParser) -> None:
    run.add_arguments(parser)
    parser.add_argument("-o", "--output", required=True, metavar="FILE", help="where to write the learned policy")
    parser.add_argument("--force", action="store_true", help="overwrite FILE if it exists")


def main(args: argparse.Namespace) -> int:
    if os.path.exists(args.output) and not args.force:
        return run._fail(f"{args.output} already exists", "pass --force to overwrite it, or -o elsewhere")
    command = args.command[1:] if args.command[:1] == ["--"] else list(args.command)
    args.audit_all = True  # every category through the supervisor, or nothing is recorded
    as_json, args.json = args.json, False  # one JSON summary: learn's own, below
    learner = Learner()
    with tempfile.TemporaryDirectory(prefix="faramesh-learn-") as scratch:
        if not args.policy:
            args.policy = [os.path.join(scratch, "permit-all.fpl")]
            with open(args.policy[0], "w", encoding="utf-8") as f:
                f.write(PERMIT_ALL)
        status = run.main(args, wrap_decide=learner.wrap)
    if status == run.EXIT_SETUP:
        return status
    text = render_policy(_agent_name(args.output), learner.calls, workdir=os.getcwd(),
                         command=shlex.join(command), skipped=learner.skipped)
    try:
        with open(args.output, "w", encoding="utf-8") as out:
            out.write(text)
    except OSError as err:
        return run._fail(f"cannot write {args.output}: {err.strerror}", "the directory must exist and be writable")
    if as_json:  # on stderr, as for run: stdout is the agent's
        print(json.dumps({"output": args.output, "calls": len(learner.calls), "skipped": learner.skipped,
                          "exit_status": status}), file=sys.stderr)
    elif not term.quiet():
        print(f"faramesh-sandbox: learned {len(learner.calls)} call(s) into {args.output} (agent exited {status}); "
              f"review it, then: faramesh-sandbox run --policy {args.output} -- {shlex.join(command)}", file=sys.stderr)
    return status


def _agent_name(path: str) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-")
    return name if name and name[0].isalpha() else f"agent-{name or 'learned'}"
