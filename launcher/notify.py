"""Notification channels for deferred calls: a rule's ``notify: "finance"`` sends a JSON event to
every channel configured under ``[notify.finance]``.

Config (TOML) at $FARAMESH_SANDBOX_CONFIG, else $XDG_CONFIG_HOME/faramesh-sandbox/config.toml
(~/.config/...)::

    [notify.finance]
    command = ["/usr/local/bin/page", "--team", "finance"]   # event JSON on stdin
    webhook = "http://127.0.0.1:9000/hook"                   # POST application/json
    file = "/var/log/faramesh/finance.jsonl"                 # one JSON line appended
    timeout = 5                                              # seconds per delivery (default 5)

Deliveries run on their own threads: a slow or failing channel never holds up a decision; each
outcome is logged on stderr when it fails and recorded on the approval.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import tomllib
import urllib.error
from dataclasses import dataclass
from typing import Callable

DEFAULT_TIMEOUT = 5.0
CHANNEL_KEYS = ("command", "webhook", "file", "timeout")


class ConfigError(Exception):
    """The config file is unreadable or malformed; the message says where and how to fix it."""


@dataclass(frozen=True)
class Channel:
    name: str
    command: tuple[str, ...] = ()
    webhook: str = ""
    file: str = ""
    timeout: float = DEFAULT_TIMEOUT


def config_path() -> str:
    explicit = os.environ.get("FARAMESH_SANDBOX_CONFIG")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "faramesh-sandbox", "config.toml")


def load_channels(path: str | None = None) -> dict[str, Channel]:
    """Channels by name; no file means no channels. Raises ConfigError on a bad file."""
    explicit = bool(path or os.environ.get("FARAMESH_SANDBOX_CONFIG"))
    path = path or config_path()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return {}
    except PermissionError:
        if not explicit:  # e.g. another user's $HOME after su: their config is not ours
            return {}
        raise ConfigError(f"{path}: cannot read: permission denied") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: {err} — fix the TOML syntax there") from None
    table = data.get("notify", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: `notify` must be a table of channels, e.g. [notify.finance]")
    return {name: _channel(path, name, entry) for name, entry in table.items()}


def _channel(path: str, name: str, entry) -> Channel:
    where = f"{path}: [notify.{name}]"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a table with command, webhook and/or file")
    unknown = sorted(set(entry) - set(CHANNEL_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} — use {', '.join(CHANNEL_KEYS)}")
    command = entry.get("command", [])
    if not isinstance(command, list) or not all(isinstance(a, str) for a in command):
        raise ConfigError(f"{where}: command must be a list of strings, e.g. [\"/usr/bin/logger\", \"-t\", \"x\"]")
    webhook = entry.get("webhook", "")
    if not isinstance(webhook, str) or (webhook and not webhook.startswith(("http://", "https://"))):
        raise ConfigError(f"{where}: webhook must be an http:// or https:// URL")
    file = entry.get("file", "")
    if not isinstance(file, str) or (file and not os.path.isabs(file)):
        raise ConfigError(f"{where}: file must be an absolute path")
    timeout = entry.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ConfigError(f"{where}: timeout must be a positive number of seconds")
    if not (command or webhook or file):
        raise ConfigError(f"{where}: give at least one of command, webhook, file")
    return Channel(name, tuple(command), webhook, file, float(timeout))


def _send_command(channel: Channel, body: bytes) -> None:
    result = subprocess.run(channel.command, input=body, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            timeout=channel.timeout, check=False)
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise RuntimeError(f"exited with status {result.returncode} {detail[0]}".rstrip())


def _send_webhook(channel: Channel, body: bytes) -> None:
    import urllib.request  # ~20 ms (http.client, email, ssl): only when a webhook is posted

    request = urllib.request.Request(channel.webhook, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=channel.timeout) as response:
        if not 200 <= response.status < 300:
            raise RuntimeError(f"HTTP {response.status}")


_file_lock = threading.Lock()


def _send_file(channel: Channel, body: bytes) -> None:
    with _file_lock:
        fd = os.open(channel.file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, body + b"\n")
        finally:
            os.close(fd)


# channel field -> sender; every configured one is tried
SENDERS: dict[str, Callable[[Channel, bytes], None]] = {
    "command": _send_command, "webhook": _send_webhook, "file": _send_file,
}


class Notifier:
    """Delivers events to named channels in the background; ``report(outcome)`` hears each result."""

    def __init__(self, channels: dict[str, Channel], log=sys.stderr):
        self.channels = channels
        self.log = log

    def send(self, name: str, event: dict, report: Callable[[dict], None]) -> None:
        channel = self.channels.get(name)
        if channel is None:
            self._failed(report, name, "config", f"no [notify.{name}] channel in {config_path()}")
            return
        body = json.dumps(event, separators=(",", ":"), default=str).encode()
        for via, sender in SENDERS.items():
            if getattr(channel, via):
                threading.Thread(target=self._deliver, args=(channel, via, sender, body, report),
                                 name=f"notify-{name}-{via}", daemon=True).start()

    def _deliver(self, channel: Channel, via: str, sender, body: bytes, report) -> None:
        try:
            sender(channel, body)
        except (OSError, RuntimeError, subprocess.SubprocessError, urllib.error.URLError, ValueError) as err:
            self._failed(report, channel.name, via, _describe(err))
            return
        report({"channel": channel.name, "via": via, "ok": True})

    def _failed(self, report, name: str, via: str, error: str) -> None:
        print(f"faramesh-sandbox: notify {name} via {via} failed: {error}", file=self.log, flush=True)
        report({"channel": name, "via": via, "ok": False, "error": error})


def _describe(err: Exception) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code}"
    if isinstance(err, urllib.error.URLError):
        return str(err.reason)
    if isinstance(err, subprocess.TimeoutExpired):
        return f"timed out after {err.timeout:g}s"
    return getattr(err, "strerror", None) or str(err)
