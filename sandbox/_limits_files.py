"""Which cgroup files hold each limit, which counters say it fired, and how that is reported."""

from __future__ import annotations

PERIOD_US = 100_000  # CFS period used for --cpus: quota = cpus * period

# limit -> cgroup controller
CONTROLLER_OF = {"memory": "memory", "pids": "pids", "cpus": "cpu"}

# limit -> value -> [(file, text)]; the first file must exist, later ones are written when present.
# Swap is limited too, so that "512M" is what the agent can use in all (no swapping past the limit).
V2_FILES = {
    "memory": lambda v: [("memory.max", str(v)), ("memory.swap.max", "0")],
    "pids": lambda v: [("pids.max", str(v))],
    "cpus": lambda v: [("cpu.max", f"{round(v * PERIOD_US)} {PERIOD_US}")],
}
V1_FILES = {  # memsw must be set after memory.limit_in_bytes (it may never be below it)
    "memory": lambda v: [("memory.limit_in_bytes", str(v)), ("memory.memsw.limit_in_bytes", str(v))],
    "pids": lambda v: [("pids.max", str(v))],
    "cpus": lambda v: [("cpu.cfs_quota_us", str(round(v * PERIOD_US))), ("cpu.cfs_period_us", str(PERIOD_US))],
}

# limit -> (v2 file, v1 file, counter key): a non-zero counter means the limit stopped something.
# CPU has none: throttling slows the agent down, it never kills or refuses anything.
EVENTS = {
    "memory": ("memory.events", "memory.oom_control", "oom_kill"),
    "pids": ("pids.events", "pids.events", "max"),
}


def human_bytes(value: int) -> str:
    for suffix, size in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if value >= size and value % size == 0:
            return f"{value // size}{suffix}"
    return str(value)


def human_seconds(value: float) -> str:
    for suffix, size in (("h", 3600), ("m", 60)):
        if value >= size and value % size == 0:
            return f"{int(value // size)}{suffix}"
    return f"{value:g}s"


def fired_message(name: str, value, count: int) -> str:
    """The one stderr line for a limit that fired (without the "faramesh-sandbox: " prefix)."""
    if name == "memory":
        return f"memory limit {human_bytes(value)} reached (OOM kill of {count} task{'s' * (count != 1)})"
    if name == "pids":
        return f"pids limit {value} reached (fork refused {count} time{'s' * (count != 1)})"
    if name == "timeout":
        return f"time limit {human_seconds(value)} reached: the sandbox was killed (exit status 124)"
    return f"{name} limit {value} reached"
