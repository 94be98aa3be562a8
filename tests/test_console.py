"""The console's parser and command dispatch, without a network."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from console.app import build_parser, execute
from console.commands import COMMANDS, Session
from console.parser import Command, CommandError, parse


def test_commands_parse_as_literals_only():
    assert parse("trainFL(dataset='mnist', rounds=5); eval()") == [
        Command("trainFL", (), {"dataset": "mnist", "rounds": 5}), Command("eval")]
    assert parse("block(3)") == [Command("block", (3,))]
    assert parse("status") == [Command("status")]
    assert parse("save(path='a;b')") == [Command("save", (), {"path": "a;b"})]
    for bad in ("__import__('os').system('ls')", "x = 1", "trainFL(rounds=1+1)", "trainFL(**{'a': 1})",
                "getModel(open('f'))", "train(", "os.system('ls')", "-" * 200_000 + "1", "x" * 20_000):
        with pytest.raises(CommandError):
            parse(bad)


class NoNetwork:
    address = "nowhere"

    def call(self, *args, **kwargs):
        raise AssertionError("no call expected")


def _session() -> tuple[Session, io.StringIO]:
    buffer = io.StringIO()
    return Session(NoNetwork(), Console(file=buffer, width=200)), buffer


def test_unknown_commands_and_bad_arguments_get_one_line_and_the_console_stays_open():
    session, out = _session()
    assert execute(session, "fly()") is False
    assert "unknown command fly(); type help() for the list" in out.getvalue()
    assert execute(session, "block(1, 2, 3)") is False
    assert "usage: block(n)" in out.getvalue()
    assert execute(session, "import os") is False
    assert not session.leaving
    assert execute(session, "help()") is True and "trainFL" in out.getvalue()
    assert execute(session, "quit()") is True and session.leaving


def test_every_documented_command_exists():
    for name in ("trainFL", "train", "resume", "pause", "save", "eval", "getSN", "getEN", "getModel", "status", "chain",
                 "block", "verify", "help", "quit", "exit", "job"):
        assert name in COMMANDS
    args = build_parser().parse_args(["--ip", "10.0.0.1", "--port", "8080", "-c", "status()"])
    assert (args.ip, args.port, args.command) == ("10.0.0.1", 8080, "status()")
