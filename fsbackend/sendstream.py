"""What changed between two btrfs snapshots, from `btrfs send --no-data -p OLD NEW | btrfs receive
--dump`: btrfs compares the two trees itself and never reads file data, so this takes time in
proportion to what changed, not to the size of the tree.

The stream creates new inodes under temporary names (o257-12-0) and renames them into place,
renames a replaced file's old inode away before unlinking it, and touches parent directories'
times; the changes a person means (added, modified, deleted, type or mode changed, renamed) are
recovered from that here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CREATE = {"mkfile", "mkdir", "mknod", "mkfifo", "mksock", "symlink", "link"}
CONTENT = {"write", "update_extent", "clone", "truncate", "set_xattr", "remove_xattr", "fallocate",
           "encoded_write", "fileattr"}  # fmt: skip
MODE = {"chmod", "chown"}


@dataclass
class Changes:
    added: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    mode_changed: list[str] = field(default_factory=list)
    type_changed: list[str] = field(default_factory=list)
    renamed: list[tuple[str, str]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {k: len(getattr(self, k)) for k in ("added", "modified", "deleted", "mode_changed", "type_changed", "renamed")}

    def only(self, paths: list[str]) -> "Changes":
        """The changes at or under one of paths."""
        def keep(p: str) -> bool:
            return any(p == x or p.startswith(x.rstrip("/") + "/") for x in paths)

        out = Changes(renamed=[(a, b) for a, b in self.renamed if keep(a) or keep(b)])
        for k in ("added", "modified", "deleted", "mode_changed", "type_changed"):
            setattr(out, k, [p for p in getattr(self, k) if keep(p)])
        return out


def _unescape(tok: str) -> str:
    out, i = [], 0
    simple = {"a": "\a", "b": "\b", "e": "\x1b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
    while i < len(tok):
        c = tok[i]
        if c == "\\" and i + 1 < len(tok):
            n = tok[i + 1]
            if n in "01234567" and i + 3 < len(tok) + 1 and all(x in "01234567" for x in tok[i + 1 : i + 4]):
                out.append(chr(int(tok[i + 1 : i + 4], 8)))
                i += 4
                continue
            out.append(simple.get(n, n))
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _tokens(line: str) -> list[str]:
    """Split a dump line at unescaped blanks (paths escape their own blanks with a backslash)."""
    toks, cur, i = [], [], 0
    while i < len(line):
        c = line[i]
        if c == "\\" and i + 1 < len(line):
            cur.append(line[i : i + 2])
            i += 2
            continue
        if c in " \t":
            if cur:
                toks.append("".join(cur))
                cur = []
        else:
            cur.append(c)
        i += 1
    if cur:
        toks.append("".join(cur))
    return toks


def _strip(path: str) -> str:
    """./SUBVOL/a/b -> /a/b"""
    parts = path.split("/", 2)
    return "/" + parts[2] if len(parts) > 2 else "/"


def parse(dump: str, type_of_old, type_of_new) -> Changes:
    """type_of_old/new(path) -> the file type letter of path in the old/new snapshot (or None)."""
    new: set[str] = set()  # inodes created by the stream, under their current names
    origin: dict[str, str] = {}  # existing inodes moved by the stream: current name -> old name
    modified: set[str] = set()
    moded: set[str] = set()
    deleted: set[str] = set()

    def moved(src: str, dst: str) -> None:
        for group in (new, modified, moded):
            for p in [p for p in group if p == src or p.startswith(src + "/")]:
                group.discard(p)
                group.add(dst + p[len(src) :])
        for p in [p for p in origin if p == src or p.startswith(src + "/")]:
            origin[dst + p[len(src) :]] = origin.pop(p)

    for line in dump.splitlines():
        toks = _tokens(line)
        if len(toks) < 2:
            continue
        cmd, path = toks[0], _strip(_unescape(toks[1]))
        args = dict(t.split("=", 1) for t in toks[2:] if "=" in t)
        if cmd in ("snapshot", "subvol"):
            continue
        if cmd in CREATE:
            new.add(path)
        elif cmd == "rename":
            dst = _strip(_unescape(args.get("dest", "")))
            if path in new or any(path.startswith(p + "/") for p in new):
                moved(path, dst)
            else:
                was = origin.pop(path, path)
                moved(path, dst)
                origin[dst] = was
        elif cmd in ("unlink", "rmdir"):
            if path in new:
                new.discard(path)
            else:
                deleted.add(origin.pop(path, path))
                modified.discard(path)
                moded.discard(path)
        elif cmd in CONTENT:
            if path not in new:
                modified.add(origin.get(path, path))
        elif cmd in MODE:
            if path not in new:
                moded.add(origin.get(path, path))
    ch = Changes()
    for p in sorted(new):
        if p in deleted:  # the same name, a new inode: replaced
            deleted.discard(p)
            (ch.modified if type_of_old(p) == type_of_new(p) else ch.type_changed).append(p)
        elif type_of_old(p) is not None:
            # Renamed over an existing name that the stream did not unlink first.
            (ch.modified if type_of_old(p) == type_of_new(p) else ch.type_changed).append(p)
        else:
            ch.added.append(p)
    for dst, src in sorted(origin.items()):
        if dst != src:
            ch.renamed.append((src, dst))
    ch.deleted = sorted(deleted)
    ch.modified = sorted(set(ch.modified) | {p for p in modified if p not in deleted})
    ch.mode_changed = sorted(p for p in moded if p not in deleted and p not in ch.modified)
    ch.type_changed.sort()
    return ch
