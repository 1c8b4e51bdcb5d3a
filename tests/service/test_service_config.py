"""The service config: every problem reported (each naming its table and key), the argv a
valid entry turns into, arbitrary documents never crash the validator; and the systemd
units `hammer service install` writes (checked by systemd-analyze verify)."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import run_hammer
from hammerfs.service.config import ConfigError, parse_config


@pytest.fixture
def env(tmp_path):
    vol = tmp_path / "vol.img"
    vol.write_bytes(b"\0" * 4096)  # validation never opens the volume
    vol2 = tmp_path / "vol2.img"
    vol2.write_bytes(b"\0" * 4096)
    key = tmp_path / "k"
    key.write_bytes(b"secret")
    key.chmod(0o600)
    for d in ("a", "b", "a/inner"):
        (tmp_path / d).mkdir()
    return tmp_path


def errors_of(data: dict) -> str:
    with pytest.raises(ConfigError) as exc:
        parse_config(data, "/etc/hammerfs/hammerfs.toml")
    return str(exc.value)


def test_a_valid_config_gives_the_commands_to_run(env):
    cfg = parse_config({
        "mount": [{"volume": f"{env}/vol.img:0", "mountpoint": f"{env}/a",
                   "key_file": f"{env}/k", "options": "ro"},
                  {"name": "second", "volume": f"{env}/vol2.img", "pfs": 3,
                   "mountpoint": f"{env}/b/"}],
        "stream": [{"source": f"{env}/a", "target": "backup@nas:/fort_knox/pfs/slave",
                    "bwlimit": "10m", "port": 2222, "reconnect_delay": 2.5,
                    "verbose": True}],
        "cleanup": {"schedule": "Sun 03:00"}})
    a, b = cfg.mounts
    assert a.name == "a" and a.pfs == 0 and a.readonly
    # the mount holding one end of a stream heals from the other end (its ssh port too)
    assert a.mount_argv() == ["mount", "--key-file", f"{env}/k", "-o", "ro",
                              "--heal-from", "backup@nas:/fort_knox/pfs/slave",
                              "--heal-port", "2222", f"{env}/vol.img:0", f"{env}/a"]
    assert b.name == "second" and b.mount_argv() == ["mount", f"{env}/vol2.img:3", f"{env}/b"]
    (s,) = cfg.streams
    assert s.stream_argv() == ["mirror-stream", "-b", "10m", "--reconnect-delay", "2.5",
                               "-p", "2222", "-v", f"{env}/a",
                               "backup@nas:/fort_knox/pfs/slave"]
    # cleanup defaults to the writable mounts
    assert cfg.cleanup_paths == (f"{env}/b",) and cfg.schedule == "Sun 03:00"
    # scrub: every mount, monthly, no metrics unless asked
    assert cfg.scrub_paths == (f"{env}/a", f"{env}/b") and cfg.scrub_schedule == "monthly"
    assert cfg.metrics is None


def test_scrub_metrics_and_healing_between_two_mounts(env):
    cfg = parse_config({
        "mount": [{"volume": f"{env}/vol.img", "mountpoint": f"{env}/a"},
                  {"volume": f"{env}/vol2.img", "mountpoint": f"{env}/b"}],
        "stream": [{"source": f"{env}/a", "target": f"{env}/b/pfs/slave"}],
        "scrub": {"paths": [f"{env}/b"], "schedule": "weekly", "rate": "50m"},
        "metrics": {"port": 9123, "textfile": f"{env}/hammerfs.prom", "interval": "30s"}})
    a, b = cfg.mounts
    assert a.heal_from == f"{env}/b/pfs/slave" and b.heal_from == f"{env}/a"
    assert b.mount_argv()[1:3] == ["--heal-from", f"{env}/a"]
    assert (cfg.scrub_paths, cfg.scrub_schedule, cfg.scrub_rate) == \
        ((f"{env}/b",), "weekly", "50m")
    assert (cfg.metrics.port, cfg.metrics.textfile, cfg.metrics.interval) == \
        (9123, f"{env}/hammerfs.prom", 30)


@pytest.mark.parametrize("data, message", [
    ({}, "nothing to do: no [[mount]] and no [[stream]]"),
    ({"mount": {"volume": "x"}}, "[mount] must be written [[mount]]"),
    ({"mounts": []}, "the top level: unknown key 'mounts' (did you mean 'mount'?)"),
    ({"mount": [{"volume": "{d}/vol.img"}]}, "[[mount]] #1: missing 'mountpoint'"),
    ({"mount": [{"volume": "{d}/nope.img", "mountpoint": "{d}/a"}]},
     "[[mount]] #1 (a): volume {d}/nope.img: no such file or device"),
    ({"mount": [{"volume": "{d}/vol.img", "mountpoint": "{d}/zzz"}]},
     "mountpoint {d}/zzz is not a directory (create it: mkdir -p {d}/zzz)"),
    ({"mount": [{"volume": "{d}/vol.img", "mountpoint": "a"}]},
     "mountpoint 'a' must be an absolute path"),
    ({"mount": [{"volume": "{d}/vol.img", "mountpoint": "{d}/a", "pfs": "1"}]},
     "'pfs' must be a integer, not '1'"),
    ({"mount": [{"volume": "{d}/vol.img", "mountpoint": "{d}/a", "pfs": 70000}]},
     "pfs 70000 is out of range"),
    ({"mount": [{"volume": "{d}/vol.img:2", "mountpoint": "{d}/a", "pfs": 1}]},
     "the PFS is given twice"),
    ({"mount": [{"volume": "{d}/vol.img", "mountpoint": "{d}/a", "options": ["rw", "fast"]}]},
     "unknown mount option 'fast'"),
    ({"mount": [{"volume": "{d}/vol.img", "mountpoint": "{d}/a", "key_file": "{d}/none"}]},
     "key_file {d}/none: no such file"),
    ({"mount": [{"volume": "{d}/vol.img", "mountpoint": "{d}/a", "key_file": "{d}/k",
                 "keyfile_offset": 100}]},
     "key file {d}/k is shorter than --keyfile-offset 100"),
    ({"mount": [{"volume": "{d}/vol.img", "mountpoint": "{d}/a", "keyfile_size": 4}]},
     "keyfile_offset/keyfile_size need a key_file"),
    ({"mount": [{"volume": "{d}/vol.img", "mountpoint": "{d}/a"},
                {"volume": "{d}/vol2.img", "mountpoint": "{d}/a/"}]},
     "mountpoint {d}/a is used by both a and a"),
    ({"mount": [{"volume": "{d}/vol.img", "mountpoint": "{d}/a"},
                {"volume": "{d}/vol.img", "mountpoint": "{d}/b"}]},
     "volume {d}/vol.img is in both a and b: one process owns a whole volume"),
    ({"mount": [{"volume": "{d}/vol.img", "mountpoint": "{d}/a"},
                {"volume": "{d}/vol2.img", "mountpoint": "{d}/a/inner"}]},
     "mountpoint {d}/a/inner (inner) is inside {d}/a (a)"),
    ({"stream": [{"source": "{d}/a", "target": "{d}/a"}]},
     "source and target are the same"),
    ({"stream": [{"source": "relative", "target": "h:/x"}]},
     "source 'relative' must be an absolute path or [user@]host:PATH"),
    ({"mount": [{"volume": "{d}/vol.img", "mountpoint": "{d}/a"}],
      "stream": [{"source": "{d}/vol.img", "target": "h:/x"}]},
     "source {d}/vol.img is the volume of [[mount]] a: stream from/to its mount"),
    ({"stream": [{"source": "{d}/vol.img", "target": "h:/x"},
                 {"source": "{d}/vol2.img", "target": "h:/x"}]},
     "target h:/x is fed by both"),
    ({"stream": [{"source": "{d}/vol.img", "target": "h:/x", "reconnect_delay": -1}]},
     "reconnect_delay -1 is out of range"),
    ({"stream": [{"source": "{d}/vol.img", "target": "h:/x", "port": True}]},
     "'port' must be a integer, not True"),
    ({"stream": [{"source": "{d}/vol.img", "target": "h:/x"}], "cleanup": {"paths": ["x"]}},
     "[cleanup]: path 'x' must be absolute"),
    ({"stream": [{"source": "{d}/vol.img", "target": "h:/x"}], "cleanup": {"when": 1}},
     "[cleanup]: unknown key 'when'"),
    # issue 11.8: every value checked for type and range, nothing reaches a unit file or a
    # path with control characters in it
    ({"stream": [{"source": "{d}/vol.img", "target": "h:/x"}],
      "cleanup": {"schedule": "daily\nUnit=reboot.target"}},
     "[cleanup]: 'schedule' contains a control character: 'daily\\nUnit=reboot.target'"),
    ({"stream": [{"source": "{d}/vol.img", "target": "h:/x"}],
      "cleanup": {"schedule": "every other tuesday"}},
     "schedule 'every other tuesday': systemd-analyze calendar: "),
    ({"stream": [{"source": "{d}/vol.img", "target": "h:/x"}],
      "cleanup": {"schedule": "daily %h"}}, "is not a systemd calendar expression"),
    ({"stream": [{"source": "{d}/vol.img", "target": "h:/x", "bwlimit": "abc"}]},
     "bad bwlimit 'abc' (e.g. 10m, 1.5g)"),
    ({"stream": [{"source": "{d}/vol.img", "target": "h:/x", "chunk_size": "-5"}]},
     "bad chunk_size '-5'"),
    ({"stream": [{"source": "{d}/vol.img", "target": "h:/x", "chunk_size": 0}]},
     "chunk_size 0 is out of range"),
    ({"stream": [{"source": "{d}/vol.img", "target": "h:/x", "bwlimit": "9999999t"}]},
     "bwlimit '9999999t' is out of range"),
    ({"stream": [{"source": "{d}/vol.img", "target": "h:/x", "port": 99999999}]},
     "port 99999999 is out of range (1-65535)"),
    ({"stream": [{"source": "{d}/vol.img", "target": "h:/x", "port": 0}]},
     "port 0 is out of range"),
    ({"stream": [{"source": "{d}/vol.img", "target": "h:/x", "reconnect_delay": float("inf")}]},
     "reconnect_delay inf is out of range"),
    ({"stream": [{"source": "{d}/vol.img", "target": "h:/x", "reconnect_delay": float("nan")}]},
     "reconnect_delay nan is out of range"),
    ({"stream": [{"source": "{d}/vol.img", "target": "h:/x", "reconnect_delay": "soon"}]},
     "bad reconnect_delay 'soon'"),
    ({"stream": [{"source": "{d}/vol.img", "target": "h:/x", "name": "a\0b"}]},
     "'name' contains a control character: 'a\\x00b'"),
    ({"stream": [{"source": "{d}/vol.img", "target": "h:/x", "name": "a\nb"}]},
     "'name' contains a control character"),
    ({"mount": [{"volume": "{d}/vol.img\0", "mountpoint": "{d}/a"}]},
     "'volume' contains a control character"),
    ({"mount": [{"volume": "{d}/vol.img", "mountpoint": "{d}/a\n"}]},
     "'mountpoint' contains a control character"),
    ({"mount": [{"volume": "{d}/vol.img", "mountpoint": "{d}/a", "options": ["ro\n"]}]},
     "'options' contains a control character"),
    ({"mount": [{"volume": "{d}/vol.img", "mountpoint": "{d}/a", "options": ["asof=zz"]}]},
     "mount option 'asof=zz'"),
    ({"mount": [{"volume": "{d}/vol.img", "mountpoint": "{d}/a",
                 "keyfile_offset": 1 << 62, "key_file": "{d}/k"}]},
     "keyfile_offset 4611686018427387904 is out of range"),
    ({"stream": [{"source": "{d}/vol.img", "target": "h:/x"}],
      "cleanup": {"paths": ["/x\0y"]}}, "[cleanup]: 'paths' contains a control character"),
    ({"stream": [{"source": "{d}/vol.img", "target": "h:/x", "bwlimit": [[[[[[1]]]]]]}]},
     "'bwlimit' must be a string or integer"),
    ({"stream": [{"source": "{d}/vol.img", "target": "h:/x"}], "metrics": {"port": 0}},
     "[metrics]: port 0 is out of range (1-65535)"),
    ({"stream": [{"source": "{d}/vol.img", "target": "h:/x"}], "metrics": {}},
     "[metrics]: give a port (HTTP on 127.0.0.1) or a textfile"),
    ({"stream": [{"source": "{d}/vol.img", "target": "h:/x"}],
      "metrics": {"textfile": "m.prom"}}, "textfile 'm.prom' must be an absolute path"),
    ({"stream": [{"source": "{d}/vol.img", "target": "h:/x"}],
      "metrics": {"port": 9, "interval": "0.1s"}}, "interval '0.1s' is shorter than 1 second"),
    ({"stream": [{"source": "{d}/vol.img", "target": "h:/x"}],
      "metrics": {"port": 9, "speed": 1}}, "[metrics]: unknown key 'speed'"),
    ({"stream": [{"source": "{d}/vol.img", "target": "h:/x"}],
      "scrub": {"schedule": "every day!"}}, "[scrub]: schedule 'every day!' is not a systemd"),
    ({"stream": [{"source": "{d}/vol.img", "target": "h:/x"}], "scrub": {"rate": "fast"}},
     "[scrub]: bad rate 'fast'"),
    ({"stream": [{"source": "{d}/vol.img", "target": "h:/x"}], "scrub": {"paths": ["/x"]}},
     "[scrub]: path '/x' is not inside a configured [[mount]]"),
])
def test_bad_configs_say_what_and_where(env, data, message):
    def fill(value):
        if isinstance(value, str):
            return value.replace("{d}", str(env))
        if isinstance(value, list):
            return [fill(v) for v in value]
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        return value
    text = errors_of(fill(data))
    assert text.startswith("config /etc/hammerfs/hammerfs.toml:")
    assert fill(message) in text


def test_every_problem_is_listed_at_once(env):
    text = errors_of({"mount": [{"volume": f"{env}/nope", "mountpoint": "rel", "x": 1}],
                      "stream": [{"source": f"{env}/a"}]})
    assert len(text.splitlines()) == 5  # header + unknown key, volume, mountpoint, target


toml_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.floats(allow_nan=False)
    | st.sampled_from(["", "/", "ro", "x:1", "/tmp", "a@b:/c", "asof=0x10", "daily"]),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(sorted({"volume", "mountpoint", "pfs", "options",
                                              "source", "target", "paths", "key_file",
                                              "name", "port", "bwlimit", "zz", "rate",
                                              "schedule", "textfile", "interval"})),
                      inner, max_size=4),
    max_leaves=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["mount", "stream", "cleanup", "scrub", "metrics",
                                        "other"]),
                       toml_values, max_size=3))
def test_arbitrary_documents_are_refused_cleanly_or_accepted(data):
    try:
        cfg = parse_config(data)
    except ConfigError as exc:
        assert str(exc).startswith("config <config>:")
    else:
        assert cfg.mounts or cfg.streams


# -- units ---------------------------------------------------------------------------------------
def test_service_install_writes_units_that_systemd_accepts(env):
    config = env / "hammerfs.toml"
    config.write_text(f'[[mount]]\nvolume = "{env}/vol.img"\nmountpoint = "{env}/a"\n'
                      '[cleanup]\nschedule = "*-*-* 04:00:00"\n')
    units = env / "units"
    units.mkdir()
    res = run_hammer("service", "install", "--config", config, "--prefix", units)
    names = ("hammerfs.service", "hammerfs-cleanup.service", "hammerfs-cleanup.timer",
             "hammerfs-scrub.service", "hammerfs-scrub.timer")
    for name in names:
        assert f"wrote {units}/{name}" in res.stdout
    assert "systemctl enable --now hammerfs.service" in res.stdout
    assert "systemctl enable --now hammerfs-cleanup.timer" in res.stdout
    again = run_hammer("service", "install", "--config", config, "--prefix", units)
    assert again.stdout.count("unchanged") == 5

    parsed = {}
    for name in names:
        ini = configparser.ConfigParser(strict=True, interpolation=None)
        ini.optionxform = str  # systemd keys are case-sensitive
        ini.read(units / name)
        parsed[name] = ini
    svc = parsed["hammerfs.service"]
    assert svc["Unit"]["After"] == "local-fs.target network-online.target"
    assert svc["Service"]["Type"] == "notify" and svc["Service"]["Restart"] == "on-failure"
    assert svc["Service"]["KillMode"] == "mixed"
    exec_start = svc["Service"]["ExecStart"].split()
    assert os.access(exec_start[0], os.X_OK)
    assert exec_start[-4:] == ["up", "-f", "--config", str(config)]
    assert svc["Install"]["WantedBy"] == "multi-user.target"
    timer = parsed["hammerfs-cleanup.timer"]["Timer"]
    assert timer["OnCalendar"] == "*-*-* 04:00:00" and timer["Persistent"] == "true"
    cleanup = parsed["hammerfs-cleanup.service"]["Service"]
    assert cleanup["Type"] == "oneshot"
    assert cleanup["ExecStart"].split()[-4:] == ["service", "cleanup", "--config",
                                                  str(config)]

    scrub_timer = parsed["hammerfs-scrub.timer"]["Timer"]
    assert scrub_timer["OnCalendar"] == "monthly" and scrub_timer["Persistent"] == "true"
    assert parsed["hammerfs-scrub.service"]["Service"]["ExecStart"].split()[-4:] == \
        ["service", "scrub", "--config", str(config)]

    # systemd's own checker (package systemd, in scripts/bootstrap): no warning at all
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: run scripts/bootstrap"
    verify = subprocess.run([analyze, "verify", *(str(units / n) for n in names)],
                            capture_output=True, text=True)
    assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr


def _example_errors(text: str) -> str:
    import tomllib
    try:
        parse_config(tomllib.loads(text))
    except ConfigError as exc:
        return str(exc)
    return ""


def test_the_documented_examples_use_only_known_keys():
    """`hammer up --help` and the README show configs: they must stay valid TOML whose only
    problems here are paths that do not exist on this machine."""
    from pathlib import Path

    from hammerfs.cli.service_cmds import CONFIG_EXAMPLE
    help_toml = "\n".join(line[2:] for line in CONFIG_EXAMPLE.splitlines()[1:])
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    readme_toml = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    for text in (help_toml, readme_toml):
        errors = _example_errors(text)
        assert "unknown key" not in errors and "must be" not in errors, errors
        assert "no such file" in errors  # /dev/sdb and friends are not here
