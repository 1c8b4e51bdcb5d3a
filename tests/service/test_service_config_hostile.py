"""Hostile and damaged service configs (issue 11.8): whatever the file holds, `hammer up
--check` answers with a clear error naming the file (never a traceback), nothing that is
not a valid systemd calendar expression reaches the timer unit, and the key files are
tried against their volumes' LUKS headers."""

from __future__ import annotations

import os
import random
import shutil
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import run_hammer
from hammerfs.cli.service_cmds import CONFIG_EXAMPLE
from hammerfs.errors import HammerError
from hammerfs.service.config import ConfigError, parse_config_bytes
from hammerfs.service.units import render_units

FAST_KDF = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]


def up_check(config) -> subprocess.CompletedProcess:
    return run_hammer("up", "--check", "--config", config, check=False)


def assert_clean_refusal(res: subprocess.CompletedProcess, *words: str) -> None:
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr and res.stderr.startswith("hammer: config ")
    for word in words:
        assert word in res.stderr, res.stderr


@pytest.mark.parametrize("content, words", [
    (b'[[stream]]\nsource = "/a\xff\xfe"\ntarget = "h:/x"\n',
     ["line 2: not UTF-8 text (byte 0xff)"]),
    (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", ["not UTF-8"]),
    (b"x = " + b"[" * 5000 + b"]" * 5000 + b"\n", ["nested too deeply"]),
    (b"[[mount]\nvolume = 1\n", ["not valid TOML"]),
    (b'[[stream]]\nsource = "/a"\ntarget = "h:/x"\nname = "a\\u0000b"\n',
     ["'name' contains a control character"]),
])
def test_unparsable_files_name_the_file(tmp_path, content, words):
    config = tmp_path / "hammerfs.toml"
    config.write_bytes(content)
    assert_clean_refusal(up_check(config), str(config), *words)


def test_special_files_are_refused_without_hanging(tmp_path):
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    assert_clean_refusal(up_check(fifo), "not a regular file")
    assert_clean_refusal(up_check(tmp_path), "not a regular file")


def test_schedule_injection_never_reaches_the_timer(tmp_path):
    vol = tmp_path / "vol.img"
    vol.write_bytes(b"\0" * 4096)
    (tmp_path / "a").mkdir()
    config = tmp_path / "hammerfs.toml"
    config.write_text(f'[[mount]]\nvolume = "{vol}"\nmountpoint = "{tmp_path}/a"\n'
                      '[cleanup]\nschedule = "daily\\nUnit=reboot.target"\n')
    units = tmp_path / "units"
    units.mkdir()
    res = run_hammer("service", "install", "--config", config, "--prefix", units,
                     check=False)
    assert_clean_refusal(res, "'schedule' contains a control character")
    assert os.listdir(units) == []
    with pytest.raises(HammerError):  # the renderer refuses it on its own too
        render_units(["/usr/bin/hammer"], "/etc/hammerfs/hammerfs.toml",
                     "daily\nUnit=reboot.target")
    with pytest.raises(HammerError):
        render_units(["/usr/bin/hammer"], "/etc/x\n[Service]\nExecStartPre=/bin/sh", "daily")


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="needs systemd-analyze")
def test_unit_words_are_escaped_for_systemd(tmp_path):
    """A config path with a space, a %specifier and a $variable stays that path."""
    top = tmp_path / "my 100% $HOME"
    top.mkdir()
    vol = top / "vol.img"
    vol.write_bytes(b"\0" * 4096)
    (top / "a").mkdir()
    config = top / "hammerfs.toml"
    config.write_text(f'[[mount]]\nvolume = "{vol}"\nmountpoint = "{top}/a"\n')
    units = tmp_path / "units"
    units.mkdir()
    run_hammer("service", "install", "--config", config, "--prefix", units)
    service = units / "hammerfs.service"
    verify = subprocess.run(["systemd-analyze", "verify", str(service)], capture_output=True,
                            text=True)
    assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr
    shown = subprocess.run(["systemd-analyze", "cat-config", str(service)],
                           capture_output=True, text=True)
    exec_start = next(line for line in (shown.stdout or service.read_text()).splitlines()
                      if line.startswith("ExecStart="))
    assert f'"{str(config).replace("%", "%%").replace("$", "$$")}"' in exec_start


def _encrypted(tmp_path, name: str, key: bytes):
    kf = tmp_path / f"{name}.key"
    kf.write_bytes(key)
    kf.chmod(0o600)
    vol = tmp_path / f"{name}.img"
    run_hammer("newfs", "--encrypt", "--key-file", kf, *FAST_KDF, "--size", "32M", vol)
    return vol, kf


def test_up_check_tries_every_key_file_against_its_volume(tmp_path):
    good_vol, good_key = _encrypted(tmp_path, "good", b"right horse\n")
    other_vol, _ = _encrypted(tmp_path, "other", b"other horse\n")
    plain = tmp_path / "plain.img"
    run_hammer("newfs", "--size", "32M", plain)
    for d in ("a", "b", "c"):
        (tmp_path / d).mkdir()
    config = tmp_path / "hammerfs.toml"
    config.write_text(
        f'[[mount]]\nvolume = "{good_vol}"\nmountpoint = "{tmp_path}/a"\n'
        f'key_file = "{good_key}"\n'
        f'[[mount]]\nvolume = "{other_vol}"\nmountpoint = "{tmp_path}/b"\n'
        f'key_file = "{good_key}"\n'
        f'[[mount]]\nvolume = "{plain}"\nmountpoint = "{tmp_path}/c"\n'
        f'key_file = "{good_key}"\n')
    before = {p: p.read_bytes() for p in (good_vol, other_vol, plain)}
    res = up_check(config)
    assert_clean_refusal(res, f"key_file {good_key} does not open {other_vol}",
                         f"volume {plain} is not encrypted")
    assert str(good_vol) not in res.stderr  # the right key is accepted
    assert len(res.stderr.splitlines()) == 3
    assert {p: p.read_bytes() for p in before} == before  # nothing written
    config.write_text(f'[[mount]]\nvolume = "{good_vol}"\nmountpoint = "{tmp_path}/a"\n'
                      f'key_file = "{good_key}"\n')
    ok = up_check(config)
    assert ok.returncode == 0 and "OK" in ok.stdout, ok.stderr


def test_mirror_options_use_the_same_checked_parsers(tmp_path):
    """The config's bwlimit/chunk_size/reconnect_delay and mirror-stream's -b/-S/
    --reconnect-delay are one parser each: what the config refuses, the command refuses."""
    for flag, value in (("-S", "-5"), ("-b", "abc"), ("-b", "0"), ("-b", "infm"),
                        ("--reconnect-delay", "inf"), ("--reconnect-delay", "-1"),
                        ("--reconnect-delay", "nan")):
        res = run_hammer("mirror-stream", flag, value, "/nonexistent/a", "/nonexistent/b",
                         check=False)
        assert res.returncode == 2 and "Traceback" not in res.stderr, (flag, value)
        assert "out of range" in res.stderr or "bad " in res.stderr, res.stderr


# -- fuzzing the loader ---------------------------------------------------------------------
EXAMPLE = "\n".join(line[2:] for line in CONFIG_EXAMPLE.splitlines()[1:]).encode()
TOKENS = [b"[[mount]]", b"[[stream]]", b"[cleanup]", b"volume", b"mountpoint", b"options",
          b"schedule", b"port", b"bwlimit", b"reconnect_delay", b"paths", b"name", b" = ",
          b'"', b"'''", b"[", b"]", b"{", b"}", b",", b"\n", b"\\u0000", b"\\n", b"inf",
          b"nan", b"-5", b"99999999", b"1e400", b"0x7fffffffffffffff", b"\xff", b"\x00",
          b"/tmp", b"daily", b"#", b"true", b"1979-05-27T07:32:00Z"]


def _loads_cleanly(raw: bytes) -> None:
    try:
        parse_config_bytes(raw, "/fuzz.toml")
    except ConfigError as exc:
        assert str(exc).startswith("config /fuzz.toml")


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=400) | st.lists(st.sampled_from(TOKENS), max_size=60).map(b"".join))
def test_fuzz_random_toml_ish_bytes(raw):
    _loads_cleanly(raw)


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(st.integers(0, len(EXAMPLE)), st.sampled_from(["flip", "insert",
                                                                         "delete", "nest"]),
                          st.sampled_from(TOKENS)), min_size=1, max_size=6))
def test_fuzz_mutations_of_the_documented_example(edits):
    raw = bytearray(EXAMPLE)
    for pos, how, token in edits:
        pos = min(pos, len(raw))
        if how == "flip" and pos < len(raw):
            raw[pos] ^= 1 << (pos % 8)
        elif how == "insert":
            raw[pos:pos] = token
        elif how == "delete":
            del raw[pos:pos + len(token)]
        else:  # nest: an array far deeper than any parser's recursion
            depth = random.Random(pos).choice([10, 900, 3000])
            raw[pos:pos] = b"x = " + b"[" * depth + b"]" * depth + b"\n"
    _loads_cleanly(bytes(raw))
