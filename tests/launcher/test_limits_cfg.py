"""Limits from the config file's [limits] table and the command line (which wins)."""

from __future__ import annotations

import argparse

import pytest

from launcher import limits_cfg, notify
from sandbox.limits import Limits


def args(**given) -> argparse.Namespace:
    return argparse.Namespace(**{name: given.get(name) for name in limits_cfg.PARSERS})


@pytest.fixture
def config(tmp_path, monkeypatch):
    path = tmp_path / "config.toml"
    monkeypatch.setenv("FARAMESH_SANDBOX_CONFIG", str(path))
    return path


@pytest.mark.parametrize(("text", "value"), [
    ("512M", 512 << 20), ("2G", 2 << 30), ("1.5G", 3 << 29), ("65536K", 64 << 20), ("16777216", 16 << 20),
    ("512MiB", 512 << 20), (100 << 20, 100 << 20),
])
def test_sizes(text, value):
    """Sizes take K, M, G, T suffixes in powers of 1024, or plain bytes."""
    assert limits_cfg.parse_size(text) == value


@pytest.mark.parametrize(("name", "text", "value"), [
    ("memory", "4096T", 4096 << 40), ("files", "2147483584", 2147483584), ("pids", "4194304", 4194304),
])
def test_each_maximum_itself_is_accepted(name, text, value):
    """The largest value of each bounded limit is still a valid limit."""
    assert limits_cfg.PARSERS[name](text) == value


@pytest.mark.parametrize(("text", "value"), [("10m", 600.0), ("90s", 90.0), ("1h", 3600.0), ("2.5", 2.5),
                                             ("500ms", 0.5), (30, 30.0)])
def test_durations(text, value):
    """Durations take ms, s, m, h, or a plain number of seconds."""
    assert limits_cfg.parse_duration(text) == value


@pytest.mark.parametrize(("name", "text", "message"), [
    ("memory", "lots", "memory 'lots' is not a size — write e.g. 512M, 2G or a number of bytes"),
    ("memory", "1M", "memory '1M' is below the 8M minimum — write e.g. 512M"),
    ("timeout", "0", "timeout '0' must be positive — write e.g. 10m"),
    ("timeout", "soon", "timeout 'soon' is not a duration — write e.g. 90s, 10m or 1h"),
    ("pids", "1", "pids '1' is below the minimum of 2"),
    ("files", "many", "files 'many' is not a whole number — write e.g. 2048"),
    ("cpus", "0", "cpus '0' must be a number from 0.01 up — write e.g. 1.5"),
    ("memory", "4097T", "memory '4097T' is above the maximum of 4096T — write e.g. 512M"),
    ("memory", "1" + "0" * 400 + "G", "memory '1" + "0" * 400 + "G' is above the maximum of 4096T — write e.g. 512M"),
    ("files", "18446744073709551693", "files '18446744073709551693' is above the maximum of 2147483584"),
    ("files", "9" * 5000, f"files '{'9' * 5000}' is above the maximum of 2147483584"),
    ("pids", 4194305, "pids 4194305 is above the maximum of 4194304"),
])
def test_bad_values_say_what_to_write(name, text, message):
    """A malformed value names the limit and gives an example of a good one."""
    with pytest.raises(limits_cfg.LimitError) as caught:
        limits_cfg.PARSERS[name](text)
    assert str(caught.value) == message


def test_no_file_and_no_options_means_only_the_default_pids_limit(config):
    """Without a config file or options the run gets the best-effort default of 1024 tasks; `none` lifts it."""
    assert limits_cfg.resolve(args()) == Limits(pids=1024, defaults=frozenset({"pids"}))
    assert limits_cfg.resolve(args(pids="none")) is None


def test_a_configured_or_given_pids_limit_is_no_longer_a_default(config):
    """A pids value from the file or the command line must be enforced (or the run refused), not skipped."""
    assert limits_cfg.resolve(args(pids="1024")) == Limits(pids=1024)
    config.write_text("[limits]\npids = 1024\n")
    assert limits_cfg.resolve(args()) == Limits(pids=1024)


def test_config_file_limits_and_command_line_override(config):
    """[limits] sets every limit; an option replaces one; `none` removes one."""
    config.write_text('[notify.ops]\nfile = "/tmp/x.jsonl"\n\n[limits]\nmemory = "512M"\npids = 256\n'
                      'cpus = 1.5\nfiles = 1024\ntimeout = "10m"\n')
    assert limits_cfg.resolve(args()) == Limits(memory=512 << 20, pids=256, cpus=1.5, files=1024, timeout=600.0)
    assert limits_cfg.resolve(args(pids="64", timeout="none")) == Limits(memory=512 << 20, pids=64, cpus=1.5,
                                                                          files=1024)
    assert limits_cfg.resolve(args(pids="none")).pids is None
    assert set(notify.load_channels()) == {"ops"}  # the same file still configures notifications


@pytest.mark.parametrize(("text", "message"), [
    ("[limits]\nmemroy = \"1G\"\n", "[limits]: unknown key 'memroy' — use memory, pids, cpus, files, timeout"),
    ("limits = 5\n", "`limits` must be a table: [limits] then memory = \"512M\" ..."),
    ("[limits]\npids = 0\n", "[limits] pids 0 is below the minimum of 2"),
])
def test_bad_config_names_the_file_and_the_fix(config, text, message):
    """A bad [limits] table is one error naming the file, the key and the fix."""
    config.write_text(text)
    with pytest.raises(notify.ConfigError) as caught:
        limits_cfg.resolve(args())
    assert str(caught.value) == f"{config}: {message}"


def test_bad_option_names_the_option(config):
    """A malformed option is reported with its leading dashes."""
    with pytest.raises(limits_cfg.LimitError) as caught:
        limits_cfg.resolve(args(memory="big"))
    assert str(caught.value) == "--memory 'big' is not a size — write e.g. 512M, 2G or a number of bytes"


def test_an_option_beyond_the_kernels_range_names_the_option_and_the_maximum(config):
    """--files 2**64+77 is refused with its maximum, not passed on to wrap around to 77 in the kernel."""
    with pytest.raises(limits_cfg.LimitError) as caught:
        limits_cfg.resolve(args(files="18446744073709551693"))
    assert str(caught.value) == "--files '18446744073709551693' is above the maximum of 2147483584"
