"""SandboxError: a set-up stage failed; the sandbox never runs half-confined."""

from __future__ import annotations


class SandboxError(Exception):
    """``stage`` names the set-up step, ``message`` the failing call and errno, ``hint`` a fix."""

    def __init__(self, stage: str, message: str, hint: str = ""):
        self.stage = stage
        self.message = message
        self.hint = hint
        super().__init__(self.render())

    def render(self) -> str:
        """One line for stderr: what failed, then the hint."""
        line = f"cannot {stage_description(self.stage)}: {self.message}"
        return f"{line} — hint: {self.hint}" if self.hint else line

    def to_dict(self) -> dict:
        return {"stage": self.stage, "message": self.message, "hint": self.hint}

    @classmethod
    def from_dict(cls, data: dict) -> "SandboxError":
        return cls(str(data.get("stage", "setup")), str(data.get("message", "")), str(data.get("hint", "")))


# stage name -> what the user reads after "cannot"
STAGE_DESCRIPTIONS = {
    "filter": "build the seccomp filter",
    "cgroup": "create the sandbox cgroup",
    "clone_init": "start the sandbox init",
    "user_namespace": "create user namespace",
    "namespaces": "create namespaces",
    "die_with_launcher": "tie the sandbox's life to the launcher",
    "map_user": "map the caller's uid/gid into the user namespace",
    "release_init": "start the sandbox init",
    "await_release": "start the sandbox init",
    "new_session": "give the sandbox a session of its own",
    "mounts": "set up mounts",
    "hostname": "set the sandbox hostname",
    "loopback": "bring up the loopback interface",
    "fork_agent": "start the agent process",
    "restore_signals": "reset signal handling for the agent",
    "chdir": "enter the working directory",
    "close_fds": "close inherited file descriptors",
    "rlimits": "apply the resource limits",
    "drop_capabilities": "drop the agent's capabilities",
    "no_new_privs": "set no_new_privs",
    "landlock": "apply the Landlock rules",
    "seccomp": "install the seccomp filter",
    "hand_over_listener": "hand the seccomp listener to the supervisor",
    "startup": "start the sandbox",
    "start_parts": "start the run's DNS stub, HTTP egress and SDK socket",
    "supervise": "supervise the sandbox",
}


def stage_description(stage: str) -> str:
    return STAGE_DESCRIPTIONS.get(stage, stage.replace("_", " "))


# (stage, errno) -> hint; (stage, None) matches any errno
HINTS = {
    ("user_namespace", 1): "user namespaces are disabled for unprivileged users (sysctl "
                           "kernel.unprivileged_userns_clone=0, or on Ubuntu 24.04+ "
                           "kernel.apparmor_restrict_unprivileged_userns=1: add an AppArmor "
                           "profile with 'userns,' or run as root)",
    ("user_namespace", 28): "user.max_user_namespaces is exhausted or 0 (sysctl user.max_user_namespaces)",
    ("namespaces", 1): "creating namespaces needs root or an unprivileged user namespace "
                       "(check `faramesh-sandbox doctor`)",
    ("namespaces", 28): "a namespace limit is exhausted (sysctl user.max_*_namespaces)",
    ("map_user", None): "the kernel refused the uid/gid map; see user_namespaces(7)",
    ("mounts", None): "the host /proc or /sys is partly covered (as in some containers), so a fresh "
                      "one may not be mounted; run on a host or a privileged container",
    ("namespaces", 13): "the sandbox cgroup exists but may not receive tasks; check delegation of "
                        "the parent cgroup",
    ("seccomp", 22): "this kernel lacks seccomp user notification (5.0+) or WAIT_KILLABLE_RECV "
                     "(5.19+); see `faramesh-sandbox doctor`",
    ("filter", None): "the trapped syscall list and the hardening rules disagree; this is a bug",
    ("chdir", None): "run from a directory that exists",
    ("rlimits", 1): "raising a hard limit needs CAP_SYS_RESOURCE, and --files may not exceed "
                    "fs.nr_open (sysctl fs.nr_open): lower the limit",
}


def hint_for(stage: str, errno_: int | None) -> str:
    """The fix to suggest when ``stage`` failed with ``errno_``."""
    return HINTS.get((stage, errno_)) or HINTS.get((stage, None), "")
