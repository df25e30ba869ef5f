"""`faramesh-sandbox completion`: scripts generated from the command table complete in a real shell."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def script(shell: str) -> str:
    done = subprocess.run([sys.executable, "-m", "launcher", "completion", shell], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    return done.stdout


@pytest.fixture(scope="module")
def bash_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("completion") / "faramesh-sandbox.bash"
    path.write_text(script("bash"))
    return path


def complete(bash_file, *words: str) -> list[str]:
    """What bash offers for the last of ``words`` (COMP_WORDS as bash would set it)."""
    quoted = " ".join("'" + word.replace("'", "'\\''") + "'" for word in ("faramesh-sandbox", *words))
    program = (f"source {bash_file}\nCOMP_WORDS=({quoted})\nCOMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))\n"
               "_faramesh_sandbox\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n")
    done = subprocess.run(["bash", "--norc", "-c", program], cwd=ROOT, capture_output=True, text=True, check=True)
    return [line for line in done.stdout.splitlines() if line]


def test_bash_script_is_valid_bash(bash_file):
    """`bash -n` parses the generated script and it registers a completion for the command."""
    checked = subprocess.run(["bash", "-n", str(bash_file)], capture_output=True, text=True)
    assert (checked.returncode, checked.stderr) == (0, "")
    assert bash_file.read_text().splitlines()[-1] == "complete -F _faramesh_sandbox -o filenames faramesh-sandbox"


def test_bash_completes_every_top_level_command(bash_file):
    """An empty word offers each command of the table, then the global options."""
    assert complete(bash_file, "") == ["run", "serve", "doctor", "learn", "init", "policy", "audit", "approvals", "ui",
                                       "completion", "-h", "--help", "--version", "--color", "--quiet"]


def test_bash_completes_nested_commands_after_global_options(bash_file):
    """`--color never policy c` offers `check`: an option's value is not taken for a command."""
    assert complete(bash_file, "policy", "") == ["check", "eval", "fmt", "-h", "--help"]
    assert complete(bash_file, "--color", "never", "policy", "c") == ["check"]
    assert complete(bash_file, "approvals", "w") == ["watch"]


def test_bash_completes_options_and_their_values(bash_file):
    """A command's own options, choices of an option, and file names for FILE options."""
    assert complete(bash_file, "run", "--pol") == ["--policy"]
    assert complete(bash_file, "init", "--template", "") == ["ci", "coding-agent", "data-agent"]
    assert complete(bash_file, "--color", "a") == ["auto", "always"]
    assert complete(bash_file, "run", "--policy", "examples/demo-") == ["examples/demo-agent.fpl"]
    assert complete(bash_file, "completion", "") == ["bash", "fish", "zsh", "-h", "--help", "--color", "--quiet"]


def test_bash_completes_the_agent_command_after_dashes(bash_file):
    """After `--` the first word is a program on PATH and later ones are file names."""
    assert "bash" in complete(bash_file, "run", "--policy", "p.fpl", "--", "bas")
    assert complete(bash_file, "run", "--policy", "p.fpl", "--", "python3", "examples/demo_a") == \
        ["examples/demo_agent.py"]


def test_zsh_script_is_the_bash_one_through_bashcompinit():
    """zsh loads bashcompinit and then defines the same completion function."""
    zsh, bash = script("zsh").splitlines(), script("bash").splitlines()
    assert zsh[1:3] == ["autoload -U +X compinit && compinit -u", "autoload -U +X bashcompinit && bashcompinit"]
    assert zsh[3:] == bash[1:]


def test_fish_script_names_every_command_under_its_group():
    """fish offers top-level commands with no command typed, nested ones only after their group."""
    lines = script("fish").splitlines()
    assert "complete -c faramesh-sandbox -n __fish_use_subcommand -a run " \
           "-d 'run a command under a policy, every trapped syscall decided'" in lines
    assert ("complete -c faramesh-sandbox -n '__fish_seen_subcommand_from audit; and not "
            "__fish_seen_subcommand_from verify show export' -a verify "
            "-d 'check the audit store'\"'\"'s hash chain; exit 0 intact, 1 tamper…'") in lines
    assert "complete -c faramesh-sandbox -n '__fish_seen_subcommand_from run' -l policy -r -F " \
           "-d 'FPL policy file; repeat to layer policies (later ones can o…'" in lines
