"""docs/cli.md is generated from the argparse parsers and kept current."""

import argparse
import subprocess
import sys
from pathlib import Path

from launcher.cli_docs import render_markdown
from launcher.completion import walk

ROOT = Path(__file__).resolve().parents[2]


def test_docs_cli_md_is_what_the_generator_prints():
    """docs/cli.md is exactly what `python3 -m launcher.cli_docs` prints (regenerate it after changing options)."""
    generated = subprocess.run([sys.executable, "-m", "launcher.cli_docs"], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout
    assert (ROOT / "docs" / "cli.md").read_text() == generated


def test_every_command_of_the_table_has_a_section():
    """Each command and nested command gets its own heading, in table order."""
    headings = [line for line in (ROOT / "docs" / "cli.md").read_text().splitlines() if line.startswith("## `")]
    assert headings[:5] == ["## `faramesh-sandbox`", "## `faramesh-sandbox run`", "## `faramesh-sandbox serve`",
                            "## `faramesh-sandbox doctor`", "## `faramesh-sandbox learn`"]
    assert "## `faramesh-sandbox approvals watch`" in headings and "## `faramesh-sandbox completion`" in headings
    assert len(headings) == 1 + 7 + 3 + 3 + 3 + 5


def test_a_section_lists_usage_and_each_argument():
    """A parser becomes a heading, its description, a usage block and a row per argument."""
    parser = argparse.ArgumentParser(prog="faramesh-sandbox", description="do a thing")
    parser.add_argument("file", metavar="FILE", help="the input")
    parser.add_argument("--mode", choices=("a", "b"), help="which | way")
    parser.add_argument("-n", "--dry-run", action="store_true", help="change nothing")
    text = render_markdown(walk(parser))
    section = text.split("## `faramesh-sandbox`\n", 1)[1]
    assert section == ("\nDo a thing.\n\n```\nfaramesh-sandbox [-h] [--mode {a,b}] [-n] FILE\n```\n\n"
                       "| argument | description |\n|---|---|\n| `FILE` | the input |\n"
                       "| `-h`, `--help` | show this help message and exit |\n"
                       "| `--mode` `{a,b}` | which \\| way |\n| `-n`, `--dry-run` | change nothing |\n\n")
