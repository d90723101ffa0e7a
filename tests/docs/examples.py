"""The code examples of README.md and docs/*.md, as data: what to run, against which server, and
what it must print.

Every fenced `bash` or `python` block is an example. An HTML comment on the line before a block
(invisible when the Markdown is rendered) says how the docs test treats it:

    <!-- example: serve -->            this block starts the server the file's later examples use
    <!-- example: setup=client -->     run after a named setup (`SETUPS`: a `Client` as `c`)
    <!-- example: output -->           (on a `text` block) what the example above prints
    <!-- example: skip="why" -->       not run by the docs test; the reason is required

Without a `serve` block a file's examples run against a server on the shipped models. Seeded
outputs in a bash block are checked too: a comment line (or a run of them) that parses as JSON is
an answer the block must print, with `"…"` (or `{…}`) standing for any value and each float equal
to the digits shown.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RUNNABLE = ("bash", "python")
ANY = "…"

# setups an example may name: code run before it (with the server's address in place of :8000)
SETUPS = {
    "client": 'from service.client import Client\n\nc = Client("http://127.0.0.1:8000")\n',
}

_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
_OPTIONS = re.compile(r"<!--\s*example:(.*?)-->\s*$")


@dataclass(frozen=True)
class Example:
    path: Path  # the Markdown file
    line: int  # the opening fence's line, 1-based
    lang: str
    code: str
    options: dict[str, str] = field(default_factory=dict)
    output: str | None = None  # the `output` block that follows it, if any

    @property
    def id(self) -> str:
        return f"{self.path.name}:{self.line}"

    @property
    def skip(self) -> str | None:
        return self.options.get("skip")


def _options(md: str, fence_start: int) -> dict[str, str]:
    before = md[:fence_start].rstrip("\n").rsplit("\n", 1)[-1]
    m = _OPTIONS.search(before)
    if m is None:
        return {}
    out: dict[str, str] = {}
    for word in shlex.split(m.group(1)):
        key, _, value = word.partition("=")
        out[key] = value
    return out


def parse(path: Path) -> list[Example]:
    """The runnable blocks of one Markdown file, each with its options and expected output."""
    md = path.read_text()
    examples: list[Example] = []
    for m in _FENCE.finditer(md):
        lang, code = m.group(1), m.group(2)
        opts = _options(md, m.start())
        line = md.count("\n", 0, m.start()) + 1
        if "output" in opts:
            if not examples:
                raise ValueError(f"{path.name}:{line}: an output block with no example before it")
            prev = examples.pop()
            examples.append(Example(prev.path, prev.line, prev.lang, prev.code, prev.options, code))
        elif lang in RUNNABLE:
            if "skip" in opts and not opts["skip"].strip():
                raise ValueError(f'{path.name}:{line}: skip needs a reason (skip="why")')
            examples.append(Example(path, line, lang, code, opts))
    return examples


# -- seeded outputs ----------------------------------------------------------------------------


def expected_answers(bash: str) -> list[Any]:
    """The JSON answers shown in a bash block's comments: a `# {...}` line, or a run of comment
    lines that parse together. Comments that are prose, or JSON cut short with `...`, are not
    answers."""
    answers: list[Any] = []
    run: list[str] = []

    def flush() -> None:
        for end in range(1, len(run) + 1):
            text = " ".join(run[:end])
            try:
                answers.append(json.loads(text.replace("{…}", json.dumps(ANY))))
            except json.JSONDecodeError:
                continue
            del run[:end]
            flush()
            return
        run.clear()

    for raw in bash.splitlines():
        s = raw.strip()
        if s.startswith("#") and (run or s[1:].lstrip().startswith(("{", "["))):
            run.append(s[1:].strip())
        else:
            flush()
    flush()
    return answers


def printed_json(stdout: str) -> list[Any]:
    """Every JSON object or array in the output, in order (curl -s prints no newline, so answers
    can share a line; SSE `data:` lines carry one each)."""
    dec = json.JSONDecoder()
    found: list[Any] = []
    i = 0
    while i < len(stdout):
        if stdout[i] in "{[":
            try:
                obj, end = dec.raw_decode(stdout, i)
            except json.JSONDecodeError:
                i += 1
                continue
            if isinstance(obj, dict) or (obj and isinstance(obj, list)):
                found.append(obj)
                i = end
                continue
        i += 1
    return found


def _decimals(x: float) -> int:
    text = repr(x)
    if "e" in text or "." not in text:
        return 0
    return len(text.split(".")[1])


def matches(expected: Any, actual: Any) -> bool:
    """`actual` is what the docs show: same keys and strings, floats equal to the digits shown,
    `"…"` matching anything."""
    if expected == ANY:
        return True
    if isinstance(expected, dict):
        return (
            isinstance(actual, dict)
            and expected.keys() == actual.keys()
            and all(matches(v, actual[k]) for k, v in expected.items())
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(expected) == len(actual)
            and all(matches(e, a) for e, a in zip(expected, actual, strict=True))
        )
    if isinstance(expected, float) and isinstance(actual, int | float):
        tol = 0.5 * 10 ** -_decimals(expected) + 1e-12
        return math.isclose(expected, actual, abs_tol=tol)
    if isinstance(expected, bool) or isinstance(actual, bool):
        return expected is actual
    return bool(expected == actual)


def answers_found(expected: list[Any], printed: list[Any]) -> list[Any]:
    """The expected answers that the printed ones do not show, in order."""
    missing: list[Any] = []
    i = 0
    for exp in expected:
        j = next((k for k in range(i, len(printed)) if matches(exp, printed[k])), None)
        if j is None:
            missing.append(exp)
        else:
            i = j + 1
    return missing


def output_pattern(shown: str) -> re.Pattern[str]:
    """An `output` block as a pattern: a line `...` stands for any lines, `{...}` within a line for
    any text; everything else is literal."""
    parts: list[str] = []
    for line in shown.rstrip("\n").split("\n"):
        if line.strip() == "...":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append("[^\n]*?".join(re.escape(p) for p in line.split("{...}")) + r"\n")
    return re.compile("".join(parts))
