#!/usr/bin/env bash
# Installs faramesh-sandbox and shows it deciding: first the policy engine alone, then a demo agent
# run under `faramesh-sandbox run` (a shell command, a secret, its workspace, a permitted and a
# forbidden connection, a refund over the limit), ending with what was permitted, denied, deferred.
# FARAMESH_DEMO_SKIP_INSTALL=1 skips the pip install (the checkout's code runs either way).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ "${FARAMESH_DEMO_SKIP_INSTALL:-0}" != 1 ]; then
    "$PY" -m pip install -q --disable-pip-version-check --root-user-action=ignore -e .
fi
fs() { "$PY" -m launcher "$@"; }  # = faramesh-sandbox, from this checkout

POLICY=examples/payment-bot.fpl
echo "== faramesh-sandbox policy check $POLICY"
fs policy check "$POLICY"
ask() {
    echo "== $1 $2"
    fs policy eval "$POLICY" --tool "$1" --args "$2" | "$PY" -c '
import json, sys
d = json.load(sys.stdin)
print("   -> %-6s %-9s %s: %s" % (d["effect"], d.get("rule_id") or "(default)", d["reason_code"], d["reason"]))'
}
ask stripe/refund '{"amount": 120, "currency": "usd"}'
ask stripe/refund '{"amount": 800, "currency": "usd"}'
ask shell/exec '{"cmd": "rm -rf /", "path": "/bin/rm"}'
ask fs/read '{"path": "/etc/shadow"}'
ask net/connect '{"host": "evil.example", "port": 443}'

WORKSPACE="$(mktemp -d /tmp/faramesh-demo.XXXXXX)"
SERVERS=""
cleanup() { [ -n "$SERVERS" ] && kill "$SERVERS" 2>/dev/null; rm -rf "$WORKSPACE"; }
trap cleanup EXIT
# Two servers on this machine's loopback: the policy names one by address and port.
coproc SERVE { exec "$PY" examples/demo_agent.py --serve; }
SERVERS=$SERVE_PID
read -r PERMITTED FORBIDDEN <&"${SERVE[0]}"
sed "s/port: 47001/port: $PERMITTED/" examples/demo-agent.fpl >"$WORKSPACE/demo-agent.fpl"
mkdir "$WORKSPACE/audit"

echo
echo "== faramesh-sandbox run --policy examples/demo-agent.fpl --report report.json --no-prompt --approve-timeout 2 -- python3 examples/demo_agent.py ..."
echo "   (servers on 127.0.0.1:$PERMITTED, permitted, and 127.0.0.1:$FORBIDDEN, not in the policy)"
status=0
fs run --policy "$WORKSPACE/demo-agent.fpl" --audit-db "$WORKSPACE/audit/audit.db" --report "$WORKSPACE/report.json" \
    --no-prompt --approve-timeout 2 -- "$PY" examples/demo_agent.py "$WORKSPACE" "$PERMITTED" "$FORBIDDEN" || status=$?
"$PY" - "$WORKSPACE/report.json" <<'PYEOF'
import json, sys
report = json.load(open(sys.argv[1]))
counts = report["decisions"]
print(f"\n== the run: agent exited {report['exit_status']}; {counts['PERMIT']} calls permitted, "
      f"{counts['DENY']} denied, {counts['DEFER']} deferred")
def argument(args):
    key = next((str(args[k]) for k in ("cmd", "path", "host", "ip") if args.get(k)), "")
    return f"{key}:{args['port']}" if args.get("port") and key else key
rows = [("OUTCOME", "TOOL", "ARGUMENT", "RULE", "REASON")]
for v in report["violations"]:
    if v["effect"] == "DEFER":
        continue  # its outcome follows: a DENY (nobody approved) or a PERMIT (approved)
    outcome = ("deferred, " + ("approved" if v["effect"] == "PERMIT" else "then denied")) if v["deferred"] else "denied"
    row = (outcome, v["tool"] or "", argument(v["args"]), v["rule_id"] or "(default)", v["reason"] or v["reason_code"])
    if row not in rows:  # `curl` is refused once per directory of $PATH tried
        rows.append(row)
widths = [max(len(row[i]) for row in rows) for i in range(5)]
for row in rows:
    print("   " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
print("   everything else was permitted. Every call is also in a hash-chained audit store: "
      "`faramesh-sandbox audit show` lists a run's (this demo's store goes with its workspace)")
PYEOF
exit "$status"
