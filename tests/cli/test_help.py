"""Every command's --help: a description, an example that parses, help text for every
option; the mirror commands explain the remote syntax and its environment; a misspelt
command gets "did you mean"."""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys

import pytest

from conftest import hammer_env
from hammerfs.cli.helptext import commands
from hammerfs.cli.main import build_parser

PARSER = build_parser()
COMMANDS = dict(commands(PARSER))


def test_every_command_is_walked():
    assert {"newfs", "umount", "mirror-stream", "luks dump", "service status", "down",
            "ssh-remote", "pfs-slave", "viconfig"} <= set(COMMANDS)
    assert len(COMMANDS) > 50


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_has_description_example_and_option_help(name):
    parser = COMMANDS[name]
    text = parser.format_help()
    assert parser.description and len(parser.description.split()) >= 8, name
    assert "example:" in text and f"hammer {name}" in text.split("example:", 1)[1], text
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) or \
                action.help == argparse.SUPPRESS:  # subcommands are walked themselves
            continue
        label = action.option_strings[0] if action.option_strings else action.dest
        assert action.help and len(action.help.split()) >= 2, f"{name}: {label} unexplained"
    for example in _examples(text):
        _parses(example)


def _examples(text: str) -> list[list[str]]:
    """The `hammer ...` invocations in the example section, shell syntax cut off."""
    found = []
    for line in text.split("example:", 1)[1].splitlines():
        for segment in re.split(r"\|\||&&|\|", line):
            segment = re.split(r"\s#|\s&\s*$|\s&$|\s>", segment)[0]
            words = shlex.split(segment)
            while words and re.match(r"^[A-Z_]+=", words[0]):
                words.pop(0)
            if "hammer" in words:
                found.append(words[words.index("hammer") + 1:])
    return found


def _parses(argv: list[str]) -> None:
    try:
        args = PARSER.parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"example does not parse: hammer {shlex.join(argv)}") from exc
    assert getattr(args, "func", None), argv


@pytest.mark.parametrize("name", ["mirror-read", "mirror-read-stream", "mirror-write",
                                  "mirror-copy", "mirror-stream"])
def test_mirror_help_explains_remote_sides(name):
    text = " ".join(COMMANDS[name].format_help().split())
    assert "[user@]host:PATH" in text
    assert "$HAMMER_RSH" in text and "$HAMMER_REMOTE_CMD" in text


def test_mirror_copy_explains_key_files_and_stream_options():
    copy = " ".join(COMMANDS["mirror-copy"].format_help().split())
    assert "--reconnect-delay" not in copy  # only mirror-stream reconnects
    assert "overrides --key-file for SRC" in copy and "SRC and DST alike" in copy
    stream = " ".join(COMMANDS["mirror-stream"].format_help().split())
    assert "--reconnect-delay SECS pause before reconnecting" in stream


def test_cleanup_help_names_the_systemd_timer():
    text = " ".join(COMMANDS["cleanup"].format_help().split())
    assert "hammerfs-cleanup.timer" in text and "systemd timer" in text
    top = " ".join(PARSER.format_help().split())
    assert "run it from cron" not in top


def test_unknown_command_did_you_mean():
    for argv, want in ((["mout", "x", "y"], "'mount'"), (["luks", "dumb", "x"], "'dump'"),
                       (["servise", "status"], "'service'")):
        proc = subprocess.run([sys.executable, "-m", "hammerfs", *argv], capture_output=True,
                              text=True, env=hammer_env())
        assert proc.returncode == 2 and "did you mean" in proc.stderr and want in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "hammerfs", "zzzzzz"], capture_output=True,
                          text=True, env=hammer_env())
    assert proc.returncode == 2 and "did you mean" not in proc.stderr


def test_help_runs_for_a_nested_command():
    proc = subprocess.run([sys.executable, "-m", "hammerfs", "service", "status", "--help"],
                          capture_output=True, text=True, env=hammer_env())
    assert proc.returncode == 0 and "example:" in proc.stdout
