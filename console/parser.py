"""Console input → commands, without ``eval``.

A line is parsed as Python syntax (so strings, numbers, lists and ``;`` between commands work as
people expect) but only calls of a bare name with literal arguments are accepted; each argument
goes through ``ast.literal_eval``. Anything else is a :class:`CommandError` with a one-line reason.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Any


MAX_LINE = 10_000


class CommandError(ValueError):
    """Input that is not a command, or a command with bad arguments."""


@dataclass(frozen=True)
class Command:
    name: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


def parse(line: str) -> list[Command]:
    """``"trainFL(rounds=3); eval()"`` → two commands. Bare names (``status``) count as calls."""
    if len(line) > MAX_LINE:
        raise CommandError(f"a command line is at most {MAX_LINE} characters")
    try:
        tree = ast.parse(line.strip(), mode="exec")
    except SyntaxError as exc:
        raise CommandError(f"cannot parse {line.strip()!r}: {exc.msg}") from None
    except (MemoryError, RecursionError):
        raise CommandError("the command line nests too deeply to parse") from None
    commands = []
    for statement in tree.body:
        if not isinstance(statement, ast.Expr):
            raise CommandError("only commands like name(arg, key=value) are allowed")
        node = statement.value
        if isinstance(node, ast.Name):
            commands.append(Command(node.id))
            continue
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
            raise CommandError("only commands like name(arg, key=value) are allowed")
        try:
            args = tuple(ast.literal_eval(a) for a in node.args)
            kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg is not None}
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise CommandError(f"{node.func.id}(): arguments must be literals (numbers, strings, True/False, lists)") from None
        if any(k.arg is None for k in node.keywords):
            raise CommandError(f"{node.func.id}(): ** arguments are not allowed")
        commands.append(Command(node.func.id, args, kwargs))
    return commands
