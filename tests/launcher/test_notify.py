"""Notification channels: a command, a webhook on loopback, a file; failures reported, config checked."""

from __future__ import annotations

import http.server
import io
import json
import queue
import socket
import sys
import threading
from pathlib import Path

import pytest

from launcher import notify
from launcher.approvals import ApprovalService
from launcher.notify import Channel, ConfigError, Notifier, load_channels
from policy.calls import ToolCall
from policy.decision import Decision, Effect

EVENT = {"event": "defer", "id": "0a1b2c3d", "tool": "stripe/refund", "args": {"amount": 900}}


def deliver(channel: Channel, event: dict = EVENT) -> tuple[list[dict], str]:
    """Send one event; returns every outcome reported (waits for them) and what was logged."""
    outcomes: queue.SimpleQueue = queue.SimpleQueue()
    log = io.StringIO()
    Notifier({channel.name: channel}, log=log).send(channel.name, event, outcomes.put)
    expected = sum(bool(getattr(channel, via)) for via in notify.SENDERS) or 1
    return [outcomes.get(timeout=10) for _ in range(expected)], log.getvalue()


def test_command_gets_the_event_on_stdin(tmp_path: Path):
    """A command channel runs the command with the event JSON on its stdin."""
    out = tmp_path / "got.json"
    script = f"import sys; open({str(out)!r}, 'wb').write(sys.stdin.buffer.read())"
    outcomes, log = deliver(Channel("finance", command=(sys.executable, "-c", script)))
    assert outcomes == [{"channel": "finance", "via": "command", "ok": True}]
    assert (json.loads(out.read_text()), log) == (EVENT, "")


def test_webhook_gets_a_json_post_on_loopback():
    """A webhook channel POSTs the event as application/json to a receiver on 127.0.0.1."""
    received: list = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, self.headers["Content-Type"], json.loads(body)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        outcomes, _ = deliver(Channel("finance", webhook=f"http://127.0.0.1:{server.server_port}/hook"))
    finally:
        server.shutdown()
        server.server_close()
    assert outcomes == [{"channel": "finance", "via": "webhook", "ok": True}]
    assert received == [("/hook", "application/json", EVENT)]


def test_file_gets_one_line_per_event(tmp_path: Path):
    """A file channel appends one JSON line per event."""
    path = tmp_path / "finance.jsonl"
    deliver(Channel("finance", file=str(path)))
    deliver(Channel("finance", file=str(path)), dict(EVENT, id="ffff0000"))
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["0a1b2c3d", "ffff0000"]


def test_refused_webhook_is_reported_and_logged_not_raised():
    """A webhook nobody listens on fails: the outcome says so and one line is logged."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    outcomes, log = deliver(Channel("finance", webhook=f"http://127.0.0.1:{port}/"))
    assert outcomes == [{"channel": "finance", "via": "webhook", "ok": False, "error": "[Errno 111] Connection refused"}]
    assert log == "faramesh-sandbox: notify finance via webhook failed: [Errno 111] Connection refused\n"


def test_slow_command_times_out():
    """A command running past the channel timeout is stopped and reported as timed out."""
    outcomes, _ = deliver(Channel("finance", command=("/bin/sleep", "5"), timeout=0.3))
    assert outcomes == [{"channel": "finance", "via": "command", "ok": False, "error": "timed out after 0.3s"}]


def test_failing_command_reports_its_status():
    """A command exiting non-zero is a failed delivery with its status and last stderr line."""
    outcomes, _ = deliver(Channel("finance", command=("/bin/sh", "-c", "echo no route >&2; exit 3")))
    assert outcomes == [{"channel": "finance", "via": "command", "ok": False,
                         "error": "exited with status 3 no route"}]


def test_unconfigured_channel_is_reported(monkeypatch, tmp_path: Path):
    """A rule naming a channel the config lacks gets a failed outcome naming the config file."""
    monkeypatch.setenv("FARAMESH_SANDBOX_CONFIG", str(tmp_path / "config.toml"))
    outcomes: list = []
    Notifier({}, log=io.StringIO()).send("legal", EVENT, outcomes.append)
    assert outcomes == [{"channel": "legal", "via": "config", "ok": False,
                         "error": f"no [notify.legal] channel in {tmp_path / 'config.toml'}"}]


def test_config_file_is_read(tmp_path: Path):
    """The TOML config gives each [notify.NAME] its command, webhook, file and timeout."""
    path = tmp_path / "config.toml"
    path.write_text('[notify.finance]\ncommand = ["/bin/true"]\nwebhook = "http://127.0.0.1:9/x"\n'
                    'file = "/tmp/f.jsonl"\ntimeout = 2\n')
    assert load_channels(str(path)) == {"finance": Channel("finance", ("/bin/true",), "http://127.0.0.1:9/x",
                                                           "/tmp/f.jsonl", 2.0)}
    assert load_channels(str(tmp_path / "missing.toml")) == {}


@pytest.mark.parametrize(("text", "message"), [
    ('[notify.finance]\nemail = "a@b"\n', "[notify.finance]: unknown key 'email' — use command, webhook, file, timeout"),
    ('[notify.finance]\nwebhook = "ftp://x"\n', "[notify.finance]: webhook must be an http:// or https:// URL"),
    ('[notify.finance]\nfile = "rel.jsonl"\n', "[notify.finance]: file must be an absolute path"),
    ('[notify.finance]\ntimeout = 2\n', "[notify.finance]: give at least one of command, webhook, file"),
    ('[notify.finance]\ncommand = "page"\n',
     '[notify.finance]: command must be a list of strings, e.g. ["/usr/bin/logger", "-t", "x"]'),
])
def test_bad_config_names_the_place_and_the_fix(tmp_path: Path, text: str, message: str):
    """Each config mistake is reported with the file, the table and what to write instead."""
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_channels(str(path))
    assert str(err.value) == f"{path}: {message}"


def test_defer_with_notify_reaches_the_channel_and_is_recorded(tmp_path: Path):
    """A deferred call whose rule says notify "finance" writes the event to finance's file, and the
    audit record of its expiry lists the delivery."""
    path = tmp_path / "finance.jsonl"
    service = ApprovalService("s9", str(tmp_path / "run"), prompt=False,
                              channels={"finance": Channel("finance", file=str(path))})
    audit: list = []
    try:
        decision = Decision(Effect.DEFER, rule_id="fpl-2", reason="high value refund", notify="finance")
        call = ToolCall("stripe/refund", {"amount": 900, "session": "s9"}, session_id="s9")
        answer = service.approver(audit.append).answer(call, decision, 1.0)
    finally:
        service.close()
    [event] = [json.loads(line) for line in path.read_text().splitlines()]
    assert (event["event"], event["tool"], event["args"], event["rule_id"], event["notify"]) == \
        ("defer", "stripe/refund", {"amount": 900, "session": "s9"}, "fpl-2", "finance")
    assert event["approve"] == f"faramesh-sandbox approvals approve {event['id']} --session s9"
    assert answer.reason_code == "APPROVAL_EXPIRED"
    assert audit[0]["deliveries"] == [{"channel": "finance", "via": "file", "ok": True}]
