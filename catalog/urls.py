"""Where a catalog lives: a SQLite file (the embedded default, one host) or a PostgreSQL database
(a fleet), named the way users write it: a path, `sqlite:///PATH`, or a libpq URL
(`postgresql://USER@HOST/DB`, `postgres://...`, `?host=/socket/dir` included) that is handed to
libpq as it is, so every form libpq reads works here."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from zapckpt.common.errors import UsageError

SCHEMES = ("postgresql", "postgres", "sqlite")


@dataclass(frozen=True)
class CatalogURL:
    kind: str  # "sqlite" or "postgresql"
    text: str  # as given (for libpq), or the SQLite file's path
    path: Path | None = None  # SQLite only

    @property
    def embedded(self) -> bool:
        return self.kind == "sqlite"

    def redacted(self) -> str:
        """For messages: the URL without its password."""
        if self.path is not None:
            return str(self.path)
        parts = urlsplit(self.text)
        netloc = parts.netloc
        if "@" in netloc:
            user, _, host = netloc.rpartition("@")
            if ":" in user:
                user = user.split(":", 1)[0] + ":***"
            netloc = f"{user}@{host}"
        query = re.sub(r"(?i)(password=)[^&]*", r"\1***", parts.query)
        return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


def sqlite_file(path: Path) -> CatalogURL:
    return CatalogURL("sqlite", str(path), Path(path))


def parse(text: str) -> CatalogURL:
    """A catalog URL as a user gives it (`zap init --catalog`, ZAP_CATALOG); bad input is a
    usage error naming what is accepted."""
    text = text.strip()
    if not text:
        raise UsageError("empty catalog URL: give postgresql://USER@HOST/DB or sqlite:///PATH")
    if text.startswith("/"):
        return sqlite_file(Path(text))
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise UsageError(f"bad catalog URL {text!r}: expected postgresql://USER@HOST/DB, sqlite:///PATH or a path")
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        raise UsageError(f"unknown catalog URL scheme {scheme!r} in {CatalogURL('x', text).redacted()!r}: "
                         f"zap keeps its catalog in PostgreSQL (postgresql://USER@HOST/DB) or SQLite (sqlite:///PATH)")  # fmt: skip
    if scheme == "sqlite":
        path = rest[1:] if rest.startswith("/") else rest  # sqlite:///abs/path (three slashes, as SQLAlchemy)
        if not path.startswith("/"):
            raise UsageError(f"bad catalog URL {text!r}: a SQLite catalog is sqlite:///ABSOLUTE/PATH")
        return sqlite_file(Path(path))
    return CatalogURL("postgresql", text)
