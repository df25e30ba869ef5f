"""Turn the tool calls observed in a learning run into an FPL policy that permits exactly them.

Grouping (docs/learn.md):
- ``shell/exec``: one rule listing the executables (``args.path in [...]``).
- ``fs/*``: per tool, paths under a temporary root (/tmp, /var/tmp, /dev/shm) or the agent's
  working directory become a ``startsWith`` on that root; other paths are grouped by their
  directory three levels down (``/usr/lib/python3.11/``): three or more distinct paths there
  become one ``startsWith`` rule, fewer are listed exactly. Nothing is ever widened to a
  directory less than two levels deep, so ``/etc/hostname`` never turns into all of ``/etc/``.
- ``net/connect``, ``net/send``: one rule per host name (or address) and port.
- ``net/listen``: one rule per address and port; ``net/dns``: one rule listing the names.
Every rule has a comment saying how many calls it covers and an example."""

from __future__ import annotations

import collections
import json
import posixpath
import re
from dataclasses import dataclass

TEMP_ROOTS = ("/tmp/", "/var/tmp/", "/dev/shm/")
GROUP_DEPTH = 3  # directory components kept when grouping paths
MIN_GROUP = 3  # distinct paths that turn a directory into a startsWith rule
MIN_PREFIX_DEPTH = 2  # never widen to / or a top-level directory such as /etc/
HOST_NAME = re.compile(r"(?=.*[a-z])[a-z0-9-]+(\.[a-z0-9-]+)*")  # a DNS name, not an address literal


@dataclass(frozen=True)
class Rule:
    tool: str
    body: str  # what follows the tool pattern: `when ...` or network clauses
    covers: int  # observed calls
    example: str

    def render(self) -> str:
        noun = "call" if self.covers == 1 else "calls"
        return f"    # {self.covers} {noun}, e.g. {self.example}\n    permit {self.tool} {self.body}".rstrip()


def quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _depth(directory: str) -> int:
    return len([part for part in directory.split("/") if part])


def _group_key(path: str, workdir: str | None) -> str | None:
    """The directory prefix (ending in /) a path is grouped under, or None to list it exactly."""
    for root in TEMP_ROOTS + ((workdir.rstrip("/") + "/",) if workdir and _depth(workdir) >= MIN_PREFIX_DEPTH else ()):
        if path.startswith(root) or path + "/" == root:
            return root
    parts = [part for part in path.split("/") if part]
    if len(parts) <= GROUP_DEPTH:
        parent = posixpath.dirname(path)
        return parent.rstrip("/") + "/" if _depth(parent) >= MIN_PREFIX_DEPTH else None
    return "/" + "/".join(parts[:GROUP_DEPTH]) + "/"


def path_conditions(paths: list[str], workdir: str | None) -> list[tuple[str, list[str]]]:
    """(condition, covered paths) pairs for a set of observed paths."""
    groups: dict[str | None, set[str]] = collections.defaultdict(set)
    for path in paths:
        groups[_group_key(path, workdir)].add(path)
    conditions, exact = [], set(groups.pop(None, set()))
    for prefix, members in sorted(groups.items()):
        is_root = prefix in TEMP_ROOTS or (workdir and prefix == workdir.rstrip("/") + "/")
        if is_root or len(members) >= MIN_GROUP:
            conditions.append((f"args.path startsWith {quote(prefix)}", sorted(members)))
        else:
            exact |= members
    if exact:
        listed = ", ".join(quote(p) for p in sorted(exact))
        test = f"args.path == {quote(next(iter(exact)))}" if len(exact) == 1 else f"args.path in [{listed}]"
        conditions.append((test, sorted(exact)))
    return conditions


def _fs_rules(tool: str, calls: list[dict], workdir: str | None) -> list[Rule]:
    paths = [c["path"] for c in calls if isinstance(c.get("path"), str)]
    counts = collections.Counter(paths)
    return [Rule(tool, f"when {condition}", sum(counts[p] for p in members), members[0])
            for condition, members in path_conditions(sorted(set(paths)), workdir)]


def _exec_rules(tool: str, calls: list[dict], _workdir) -> list[Rule]:
    paths = collections.Counter(c["path"] for c in calls if isinstance(c.get("path"), str))
    if not paths:
        return []
    listed = ", ".join(quote(p) for p in sorted(paths))
    return [Rule(tool, f"when args.path in [{listed}]", sum(paths.values()), calls[0].get("cmd") or sorted(paths)[0])]


def _endpoint_rules(tool: str, calls: list[dict], _workdir) -> list[Rule]:
    seen: collections.Counter = collections.Counter()
    for call in calls:
        if call.get("family") == "unix":
            seen[("path", call.get("path"))] += 1
        else:
            seen[(call.get("host") or call.get("ip"), call.get("port"))] += 1
    rules = []
    for (first, second), count in sorted(seen.items(), key=lambda item: tuple(map(str, item[0]))):
        if first == "path":
            rules.append(Rule(tool, f"when args.path == {quote(str(second))}", count, str(second)))
        elif isinstance(first, str) and HOST_NAME.fullmatch(first) and isinstance(second, int):
            rules.append(Rule(tool, f"host: {first} port: {second}", count, f"{first}:{second}"))
        elif isinstance(second, int):  # an address with no name: named exactly, as the guard wants
            rules.append(Rule(tool, f"when args.ip == {quote(str(first))} && args.port == {second}", count,
                              f"{first}:{second}"))
    return rules


def _listen_rules(tool: str, calls: list[dict], _workdir) -> list[Rule]:
    seen = collections.Counter((c.get("ip"), c.get("port")) for c in calls)
    return [Rule(tool, f"when args.ip == {quote(str(ip))} && args.port == {int(port)}", count, f"{ip}:{port}")
            for (ip, port), count in sorted(seen.items(), key=lambda item: (str(item[0][0]), str(item[0][1])))
            if isinstance(port, int)]


def _dns_rules(tool: str, calls: list[dict], _workdir) -> list[Rule]:
    names = collections.Counter(c.get("host") for c in calls if isinstance(c.get("host"), str))
    if not names:
        return []
    listed = ", ".join(quote(n) for n in sorted(names))
    return [Rule(tool, f"when host in [{listed}]", sum(names.values()), sorted(names)[0])]


# tool (or tool family) -> how its calls are grouped into rules
GROUPERS = {"shell/exec": _exec_rules, "net/connect": _endpoint_rules, "net/send": _endpoint_rules,
            "net/listen": _listen_rules, "net/dns": _dns_rules}


def rules_for(calls: list[tuple[str, dict]], workdir: str | None = None) -> list[Rule]:
    by_tool: dict[str, list[dict]] = collections.defaultdict(list)
    for tool, args in calls:
        by_tool[tool].append(args)
    rules: list[Rule] = []
    for tool in sorted(by_tool):
        grouper = GROUPERS.get(tool, _fs_rules if tool.startswith("fs/") else None)
        if grouper is not None:
            rules.extend(grouper(tool, by_tool[tool], workdir))
    return rules


def render_policy(agent: str, calls: list[tuple[str, dict]], *, workdir: str | None, command: str,
                  skipped: dict[str, int]) -> str:
    """The policy text: a header saying where it came from, then the rules by tool."""
    lines = [f"# Learned by `faramesh-sandbox learn` from: {command}",
             "# It permits what that run did and nothing else; review it before use.",
             "# Run the agent with the base policy first, then this one: --policy BASE --policy THIS."]
    for tool, count in sorted(skipped.items()):
        lines.append(f"# Not learned: {count} {tool} call(s) the base policy denied or deferred.")
    lines += [f"agent {agent} {{", "  default deny", "", "  rules {"]
    previous = None
    for rule in rules_for(calls, workdir):
        if previous is not None and rule.tool != previous:
            lines.append("")
        lines.append(rule.render())
        previous = rule.tool
    lines += ["  }", "}", ""]
    return "\n".join(lines)
