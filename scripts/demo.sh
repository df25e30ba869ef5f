#!/usr/bin/env bash
# Installs faramesh-sandbox and shows it deciding: checks the demo policy, then asks it about tool calls.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
"$PY" -m pip install -q --disable-pip-version-check --root-user-action=ignore -e .
POLICY=examples/payment-bot.fpl
echo "== faramesh-sandbox policy check $POLICY"
faramesh-sandbox policy check "$POLICY"
ask() {
    echo "== $1 $2"
    faramesh-sandbox policy eval "$POLICY" --tool "$1" --args "$2" | "$PY" -c '
import json, sys
d = json.load(sys.stdin)
print("   -> %-6s %-9s %s: %s" % (d["effect"], d.get("rule_id") or "(default)", d["reason_code"], d["reason"]))'
}
ask stripe/refund '{"amount": 120, "currency": "usd"}'
ask stripe/refund '{"amount": 800, "currency": "usd"}'
ask shell/exec '{"cmd": "rm -rf /", "path": "/bin/rm"}'
ask fs/read '{"path": "/workspace/notes.txt"}'
ask fs/read '{"path": "/etc/shadow"}'
ask net/connect '{"host": "api.stripe.com", "port": 443}'
ask net/connect '{"host": "evil.example", "port": 443}'

echo
echo "== faramesh-sandbox run --policy examples/demo-agent.fpl -- python3 examples/demo_agent.py"
WORKSPACE="$(mktemp -d /tmp/faramesh-demo.XXXXXX)"
AUDIT="$WORKSPACE/audit.jsonl"
faramesh-sandbox run --policy examples/demo-agent.fpl --audit "$AUDIT" -- python3 examples/demo_agent.py "$WORKSPACE"
"$PY" - "$AUDIT" <<'PYEOF'
import collections, json, sys
records = [json.loads(line) for line in open(sys.argv[1])]
counts = collections.Counter(r["effect"] for r in records)
print(f"== audit: {len(records)} decisions: " + ", ".join(f"{n} {e}" for e, n in sorted(counts.items())))
for r in records:
    if r["effect"] != "PERMIT":
        print(f"   {r['effect']:<6} {r['tool']:<11} {r['args'].get('path', '')!s:<28} {r['rule_id'] or '(default)'}: {r['reason']}")
PYEOF
rm -rf "$WORKSPACE"
