"""The `zap` command: argument parsing and error handling; each command is a thin call into
the core modules. Every failure is one line on stderr and exit code 1 (operation failed) or
2 (bad input, unknown pod or checkpoint)."""

from __future__ import annotations

import signal
import sys

# A Ctrl-C while Python is still importing zap (before main() handles it) ends quietly with
# 130: nothing has been done yet, and a traceback from the import machinery helps nobody.
signal.signal(signal.SIGINT, lambda _n, _f: sys.exit(130))

import argparse  # noqa: E402
import os
import re
import traceback

from zapckpt import __version__
from zapckpt.common.errors import UsageError, ZapError, one_line

from . import checkpoints, continuous, guard, hosts, pods, reference, server, store, system, view


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, like every other bad input
        m = re.fullmatch(r"argument (-\S+?)(?:/\S+)?: expected one argument", message)
        if m:  # `--since -5s`: argparse takes a value that starts with '-' for an option
            message += f" (a value that starts with '-' is written {m.group(1)}=VALUE)"
        raise UsageError(f"{message} (see `{self.prog} --help`)")


# The help of arguments that mean the same in every command, given once here.
COMMON_HELP = {
    "json": "print JSON instead of text (its fields are listed in the README)",
    "name": "the pod's name",
    "names": "pods' names",
    "ref": "a checkpoint: NAME@N, NAME@latest, or its id",
    "ref_a": "the older checkpoint (NAME@N, NAME@latest, or its id)",
    "ref_b": "the newer checkpoint (NAME@N, NAME@latest, or its id)",
    "new_name": "the new pod's name",
    "cmd": "the command and its arguments, after --",
    "env": "an environment variable of the pod's command (repeatable)",
    "message": "a note kept with the checkpoint",
    "follow": "keep printing what the pod writes until it ends",
    "file": "the export file (`zap export` writes it, `zap import` reads it)",
    "mountpoint": "an empty directory",
    "keep_last": "keep the N newest checkpoints",
    "keep_hourly": "keep the newest checkpoint of each of the last N hours that have one",
    "keep_daily": "keep the newest checkpoint of each of the last N days that have one",
}


_built: argparse.ArgumentParser | None = None


def parser() -> argparse.ArgumentParser:
    """The parser, made once (~17 ms here: the zap server makes it before it forks a command)."""
    global _built
    if _built is None:
        _built = build_parser()
    return _built


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="zap", description="Atomic checkpoints of running pods with their files.")
    p.add_argument("--version", action="version", version=f"zap {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for module in (system, hosts, pods, checkpoints, guard, store, continuous, view, reference, server):
        module.register(sub)
    for command in sub.choices.values():
        for action in command._actions:
            if action.help is None:
                action.help = COMMON_HELP.get(action.dest)
    return p


# Commands that do not touch pods or the store, or settle interrupted operations themselves.
_NO_RECOVERY = {"doctor", "init", "recover", "completion", "man", "server"}


# Commands that only look, or take everything down: they go on (with a warning) if recovery fails.
_DESPITE_RECOVERY = {"ps", "show", "list", "log", "logs", "df", "verify", "umount", "deinit"}


def _settle_catalog(command: str) -> None:
    """Before a command touches a pod or the store: operations whose zap died are finished or
    undone (ops/recovery.py), and image sets of an older zap are converted into the store
    (store/convert.py). Two indexed queries, without SQLAlchemy, when there is nothing to do."""
    from contextlib import closing
    from pathlib import Path

    from catalog import fastread
    from zapckpt.state import StateDir

    state = StateDir.from_env()
    where, host = state.reader_args()
    if isinstance(where, Path) and not where.exists():
        return
    conn = fastread.open_current(where, host)
    if conn is not None:  # the usual case
        with closing(conn):
            if not fastread.has_intents(conn) and not fastread.has_old_image_sets(conn) and not fastread.adopted_away(conn):
                return
    _recover_interrupted(command, state)
    _convert_old_image_sets()


def _convert_old_image_sets() -> None:
    from zapckpt.context import Context
    from zapckpt.store.convert import convert_old_image_sets

    done, failed = convert_old_image_sets(Context())  # nothing to do: one query
    if done:
        print(f"zap: converted {len(done)} image set(s) of an older zap into the image store", file=sys.stderr)
    for line in failed:
        print(f"zap: warning: not converted: {line} (`zap verify` lists it)", file=sys.stderr)


def _recover_interrupted(command: str, state) -> None:
    from zapckpt.context import Context
    from zapckpt.ops.recovery import pending, recover

    ctx = Context(state)
    try:
        if pending(ctx):
            for d in recover(ctx):
                print(f"zap: recovered: {d['op']} of {d['pod']} interrupted (started {d['started']}): {d['outcome']}",
                      file=sys.stderr)  # fmt: skip
        from zapckpt.ops.adopt import retire

        for line in retire(ctx):  # a host that comes back after its pods were adopted
            print(f"zap: {line}", file=sys.stderr)
    except Exception as e:  # noqa: BLE001 - a failed recovery must not lock the user out of deinit
        from catalog.errors import is_catalog_error

        if is_catalog_error(e):
            raise  # the catalog itself cannot be used (a full disk, unreachable): main says so in one line
        why = one_line(e) or e.__class__.__name__
        if command in _DESPITE_RECOVERY:
            print(f"zap: warning: interrupted operations could not be settled ({why}); `zap recover` retries",
                  file=sys.stderr)  # fmt: skip
            return
        raise ZapError(f"interrupted operations could not be settled first ({why}); `zap recover` retries, "
                       f"`zap deinit` still works") from None


def _catalog_failure(e: BaseException) -> str:
    from catalog.errors import explain
    from catalog.urls import parse
    from zapckpt.state import StateDir

    state = StateDir.from_env()
    try:
        where = state.catalog_location()
        url = parse(str(where)) if not hasattr(where, "exists") else None
    except Exception:  # noqa: BLE001 - a bad URL is reported where it is parsed
        url = None
    if url is None or url.embedded:
        return explain(e, str(state.root), embedded=True)
    return explain(e, url.redacted(), embedded=False)


def _check_utf8(argv: list[str]) -> None:
    for a in argv:
        try:
            a.encode()
        except UnicodeEncodeError:
            raise UsageError(f"argument {a.encode(errors='surrogateescape')!r} is not valid UTF-8") from None


# Commands that may work for seconds, with nothing to show meanwhile: a status line at a terminal
# (common/progress.py). Not those that run the user's command on the terminal (exec, guard).
_LONG_WORK = {"checkpoint", "restore", "branch", "export", "import", "stop", "rm", "rmckpt", "prune", "deinit",
              "suspend", "resume", "verify", "start", "run", "create", "init", "host"}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    argv = sys.argv[1:] if argv is None else argv
    try:
        _check_utf8(argv)
        # Everything after the first `--` is the pod's command, untouched by option parsing.
        tail: list[str] = []
        if "--" in argv:
            i = argv.index("--")
            argv, tail = argv[:i], argv[i + 1 :]
        args = parser().parse_args(argv)
        if tail:
            if not hasattr(args, "cmd"):
                raise UsageError(f"`zap {args.command}` takes no command after --")
            args.cmd = list(args.cmd or []) + tail
        if os.geteuid() != 0 and args.command not in ("doctor",):
            raise ZapError("zap must run as root (it creates namespaces, mounts and runs CRIU)")
        if os.environ.get("ZAP_CRIU_TIMEOUT"):
            from zapckpt.criu.runner import timeout

            timeout()  # a bad value is bad input, refused before anything starts
        if args.command not in _NO_RECOVERY:
            _settle_catalog(args.command)
        if args.command in _LONG_WORK:
            from zapckpt.common.progress import Ticker

            with Ticker(" ".join([args.command, *(str(getattr(args, a)) for a in ("ref", "name") if getattr(args, a, None))])):
                rc = args.func(args)
        else:
            rc = args.func(args)
        return rc or 0
    except ZapError as e:
        print(f"zap: error: {one_line(e)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("zap: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    except OSError as e:  # the machine said no: out of space, a name too long, ...
        where = f" ({e.filename})" if e.filename else ""
        print(f"zap: error: {one_line(e.strerror or e)}{where}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - never a traceback for users, unless asked
        from catalog.errors import is_catalog_error

        if is_catalog_error(e):  # the database's own words ("database or disk is full", libpq's), explained
            print(f"zap: error: {_catalog_failure(e)}", file=sys.stderr)
            if os.environ.get("ZAP_DEBUG"):
                traceback.print_exc()
            return 1
        if os.environ.get("ZAP_DEBUG"):
            traceback.print_exc()
        e = one_line(e)  # noqa: PLW2901
        if os.environ.get("ZAP_DEBUG"):
            traceback.print_exc()
        print(f"zap: internal error: {e} (ZAP_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
