"""Printing: JSON documents and aligned tables."""

from __future__ import annotations

import json
import sys


def emit_json(doc) -> None:
    """Indented for a person; a big document (`zap list --json` of 100,000 checkpoints) compact,
    from orjson in one write: indenting goes through json's pure-Python encoder, json.dump to a
    stream makes one write call per token (26 s of 31 s, measured), and even json's compact C
    encoder takes 0.6 s for 47 MB where orjson takes 0.08 s. orjson writes non-ASCII text as
    UTF-8 rather than \\u escapes: the same JSON values."""
    big = isinstance(doc, dict) and any(isinstance(v, list) and len(v) > 1000 for v in doc.values())
    if big:
        import orjson

        sys.stdout.flush()
        sys.stdout.buffer.write(orjson.dumps(doc) + b"\n")
        sys.stdout.buffer.flush()
        return
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")


def cell(value) -> str:
    """One table cell on one line: newlines, tabs and other control characters (a checkpoint
    message may hold any) are shown escaped, never printed."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def table(headers: list[str], rows: list[list[str]]) -> None:
    rows = [[cell(c) for c in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in rows:
        widths = [max(w, len(str(c))) for w, c in zip(widths, r)]
    for r in [headers, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def interval(seconds: float) -> str:
    """10s, 5m, 1.5h: a duration as `--every` takes it."""
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= n and seconds % n == 0:
            return f"{seconds / n:g}{unit}"
    return f"{seconds:g}s"


def ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def info(msg: str) -> None:
    print(msg, file=sys.stderr)


def confirm(question: str, assume_yes: bool) -> None:
    """Ask before deleting in bulk when a person is at the terminal (stdin a TTY), as `podman
    system reset` does; --yes, or a script (no TTY), goes ahead. No answer but y/yes stops the
    command with nothing done."""
    if assume_yes or not sys.stdin.isatty():
        return
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline().strip().lower()
    if answer not in ("y", "yes"):
        from zapckpt.common.errors import ZapError

        raise ZapError("not confirmed: nothing was deleted")


def warn(msg: str) -> None:
    """Something the user must know although the command succeeded: one line on stderr."""
    print(f"zap: warning: {msg}", file=sys.stderr)


class _Nil:
    """None in a --format template: "-", as in the tables."""

    def __format__(self, spec: str) -> str:
        return format("-", spec)


class _Obj(dict):
    """A JSON object in a --format template: printed as JSON, its fields reachable ({a[b]})."""

    def __getitem__(self, key):
        return _field(dict.__getitem__(self, key))

    def __format__(self, spec: str) -> str:
        import json

        return format(json.dumps(self, separators=(",", ":"), sort_keys=True), spec)


class _List(list):
    def __getitem__(self, i):
        return _field(list.__getitem__(self, i))

    def __format__(self, spec: str) -> str:
        import json

        return format(json.dumps(self, separators=(",", ":")), spec)


def _field(v):
    if v is None:
        return _Nil()
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return _Obj(v)
    if isinstance(v, list):
        return _List(v)
    return v


def template_fields(rec: dict) -> dict:
    """A JSON record's fields for str.format_map (`zap ps --format`): values as the JSON shows
    them (true, false, "-" for null, objects and lists as JSON), not as Python prints them."""
    return {k: _field(v) for k, v in rec.items()}
