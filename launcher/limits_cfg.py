"""Resource limits from the command line and the config file's ``[limits]`` table.

The config file is the one launcher/notify.py reads ($FARAMESH_SANDBOX_CONFIG, else
~/.config/faramesh-sandbox/config.toml)::

    [limits]
    memory = "512M"    # bytes, or a number with K, M, G, T (powers of 1024)
    pids = 256         # tasks: processes and threads together
    cpus = 1.5         # CPUs' worth of time
    files = 1024       # open files per process
    timeout = "10m"    # s, m, h, or a number of seconds

A command-line option overrides the same key of the file; ``none`` there removes it.
Without either, a run gets DEFAULTS, enforced only where a cgroup controller can hold them.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import tomllib
from decimal import Decimal

from launcher import notify
from sandbox.limits import Limits

SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_DURATION_UNITS = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}
MIN_MEMORY = 8 << 20  # below this even a shell cannot start
MIN_FILES = 16  # init and the agent need a few descriptors of their own before exec
MIN_PIDS = 2  # init and the agent
MAX_MEMORY = 4096 << 40  # 4096T: more than x86_64 or arm64 can address physically
MAX_FILES = 2147483584  # the largest fs.nr_open the kernel accepts: RLIMIT_NOFILE cannot exceed it
MAX_PIDS = 4194304  # PID_MAX_LIMIT: cgroup pids.max refuses more
DEFAULTS = {"pids": 1024}  # a fork bomb is bounded even in a run given no limits


class LimitError(ValueError):
    """A limit value is malformed; the message says which and gives an example."""


def parse_size(text) -> int:
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = SIZE.match(str(text)) if isinstance(text, str) else None
        if match is None:
            raise LimitError(f"memory {text!r} is not a size — write e.g. 512M, 2G or a number of bytes")
        value = Decimal(match.group(1)) * SIZE_UNITS[match.group(2).upper()]  # exact, and never inf
    if value > MAX_MEMORY:
        raise LimitError(f"memory {text!r} is above the maximum of {MAX_MEMORY >> 40}T — write e.g. 512M")
    if value < MIN_MEMORY:
        raise LimitError(f"memory {text!r} is below the {MIN_MEMORY >> 20}M minimum — write e.g. 512M")
    return int(value)


def parse_duration(text) -> float:
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        match = _DURATION.match(text) if isinstance(text, str) else None
        if match is None:
            raise LimitError(f"timeout {text!r} is not a duration — write e.g. 90s, 10m or 1h")
        value = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if not value > 0 or math.isinf(value):
        raise LimitError(f"timeout {text!r} must be positive — write e.g. 10m")
    return value


def parse_count(name: str, minimum: int, maximum: int):
    def parse(text) -> int:
        try:
            value = text if isinstance(text, int) and not isinstance(text, bool) else int(str(text), 10)
        except ValueError:
            if not str(text).strip().isdigit():
                raise LimitError(f"{name} {text!r} is not a whole number — write e.g. {minimum * 128}") from None
            value = maximum + 1  # too many digits for int(): certainly too large
        if value < minimum:
            raise LimitError(f"{name} {text!r} is below the minimum of {minimum}")
        if value > maximum:
            raise LimitError(f"{name} {text!r} is above the maximum of {maximum}")
        return value
    return parse


def parse_cpus(text) -> float:
    try:
        value = float(text) if not isinstance(text, bool) else math.nan
    except (TypeError, ValueError):
        value = math.nan
    if not 0.01 <= value <= 4096:  # the kernel's CFS quota is at least 1 ms per 100 ms period
        raise LimitError(f"cpus {text!r} must be a number from 0.01 up — write e.g. 1.5")
    return value


PARSERS = {
    "memory": parse_size, "pids": parse_count("pids", MIN_PIDS, MAX_PIDS), "cpus": parse_cpus,
    "files": parse_count("files", MIN_FILES, MAX_FILES), "timeout": parse_duration,
}
HELP = {
    "memory": "memory for the whole sandbox, e.g. 512M (cgroup memory; RLIMIT_AS per process as a fallback)",
    "pids": "tasks for the whole sandbox, e.g. 256: contains fork bombs (cgroup pids)",
    "cpus": "CPU time for the whole sandbox, e.g. 1.5 CPUs (cgroup cpu quota)",
    "files": "open files per process, e.g. 1024 (RLIMIT_NOFILE)",
    "timeout": "kill the whole sandbox after this long, e.g. 10m; exit status 124",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("resource limits (docs/run.md#limits; also [limits] in the config file)")
    for name, text in HELP.items():
        group.add_argument(f"--{name}", metavar="VALUE", default=None,
                           help=f"{text}; `none` removes a configured one")


def from_config(path: str | None = None) -> dict:
    """The ``[limits]`` table, checked; {} without a file or a table. Raises notify.ConfigError."""
    explicit = bool(path or os.environ.get("FARAMESH_SANDBOX_CONFIG"))
    path = path or notify.config_path()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return {}
    except PermissionError:
        if not explicit:  # as notify.load_channels: another user's $HOME is not our config
            return {}
        raise notify.ConfigError(f"{path}: cannot read: permission denied") from None
    except OSError as err:
        raise notify.ConfigError(f"{path}: cannot read: {err.strerror}") from None
    except tomllib.TOMLDecodeError as err:
        raise notify.ConfigError(f"{path}: {err} — fix the TOML syntax there") from None
    table = data.get("limits", {})
    if not isinstance(table, dict):
        raise notify.ConfigError(f"{path}: `limits` must be a table: [limits] then memory = \"512M\" ...")
    unknown = sorted(set(table) - set(PARSERS))
    if unknown:
        raise notify.ConfigError(f"{path}: [limits]: unknown key {unknown[0]!r} — use {', '.join(PARSERS)}")
    values = {}
    for name, raw in table.items():
        try:
            values[name] = PARSERS[name](raw)
        except LimitError as err:
            raise notify.ConfigError(f"{path}: [limits] {err}") from None
    return values


def resolve(args: argparse.Namespace, config_path: str | None = None) -> Limits | None:
    """Defaults, then config values, then the command line. Raises LimitError or notify.ConfigError."""
    configured = from_config(config_path)
    values = {**DEFAULTS, **configured}
    defaults = set(DEFAULTS) - set(configured)  # best effort; what the user asked for is enforced or refused
    for name, parse in PARSERS.items():
        given = getattr(args, name, None)
        if given is None:
            continue
        defaults.discard(name)
        if given.strip().lower() == "none":
            values.pop(name, None)
        else:
            try:
                values[name] = parse(given)
            except LimitError as err:
                raise LimitError(f"--{err}") from None
    return Limits(**values, defaults=frozenset(defaults)) if values else None
