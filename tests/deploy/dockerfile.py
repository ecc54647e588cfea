"""A small Dockerfile reader for tests: instructions, stages, exec forms; no Docker engine needed."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

INSTRUCTIONS = frozenset({"FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT",
                          "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"})
_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


class DockerfileError(ValueError):
    """The Dockerfile would not build: unknown instruction, bad exec form, no FROM first."""


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str
    arguments: str

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form CMD/ENTRYPOINT/RUN, None for the shell form."""
        text = self.arguments
        if self.keyword == "HEALTHCHECK":
            text = text.split("CMD", 1)[1].strip() if "CMD" in text else ""
        if not text.startswith("["):
            return None
        try:
            value = json.loads(text)
        except ValueError:
            raise DockerfileError(f"line {self.line}: {self.keyword} looks like exec form but is not a JSON array") from None
        if not (isinstance(value, list) and all(isinstance(item, str) for item in value)):
            raise DockerfileError(f"line {self.line}: exec form must be a JSON array of strings")
        return value


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        """Every ENV of the stage, later values winning (KEY=VALUE form)."""
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for pair in shlex.split(instruction.arguments):
                key, _, value = pair.partition("=")
                values[key] = value
        return values


def logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, text) of every instruction, continuations joined, comments dropped."""
    lines: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        lines.append((start, " ".join(part for part in pending if part)))
        pending = []
    if pending:
        raise DockerfileError(f"line {start}: continuation runs past the end of the file")
    return lines


def parse(path: Path) -> list[Stage]:
    """The stages of a Dockerfile; global ARG defaults are substituted into FROM."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for number, line in logical_lines(path.read_text()):
        keyword, _, arguments = line.partition(" ")
        keyword = keyword.upper()
        if keyword not in INSTRUCTIONS:
            raise DockerfileError(f"line {number}: unknown instruction {keyword}")
        instruction = Instruction(number, keyword, arguments.strip())
        if keyword == "FROM":
            words = [word for word in instruction.arguments.split() if not word.startswith("--")]
            base = _VARIABLE.sub(lambda m: global_args.get(m[1] or m[2], ""), words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        elif not stages:
            if keyword != "ARG":
                raise DockerfileError(f"line {number}: only ARG may come before the first FROM")
            key, _, value = instruction.arguments.partition("=")
            global_args[key] = value
        else:
            instruction.exec_form()
            stages[-1].instructions.append(instruction)
    if not stages:
        raise DockerfileError("no FROM")
    return stages
