"""Plain SQL for both engines: statements are written once, with `?` placeholders, and run on the
driver's own cursor (sqlite3, or psycopg with `%s`), for the paths where the ORM would be several
times slower (the chunk index, the listings of fastread.py)."""

from __future__ import annotations

from typing import Any, Iterable, Sequence


class Cursor:
    def __init__(self, cursor, dialect: str):
        self.cur = cursor
        self.dialect = dialect
        self.pg = dialect == "postgresql"
        self._cache: dict[str, str] = {}

    @classmethod
    def of_session(cls, s) -> "Cursor":
        """A cursor of the session's own connection, inside its transaction."""
        conn = s.connection()
        return cls(conn.connection.cursor(), conn.dialect.name)

    def sql(self, text: str) -> str:
        if not self.pg:
            return text
        out = self._cache.get(text)
        if out is None:
            out = self._cache[text] = text.replace("%", "%%").replace("?", "%s")
        return out

    def among(self, column: str, values: Sequence[Any]) -> tuple[str, list]:
        """(`column IN (?, ...)`, its arguments) for SQLite; `column = ANY(?)` with one array
        for PostgreSQL, where psycopg would otherwise parse every long statement anew."""
        if self.pg:
            return f"{column} = ANY(?)", [list(values)]
        return f"{column} IN ({marks(len(values))})", list(values)

    @property
    def batch(self) -> int:
        """How many values one `among` holds: few round trips, under SQLite's limit on a
        statement's arguments; on PostgreSQL larger arrays (5,000) were slower at 10^6 chunks."""
        return 500

    def execute(self, text: str, args: Sequence[Any] = ()) -> "Cursor":
        self.cur.execute(self.sql(text), tuple(args))
        return self

    def executemany(self, text: str, rows: Iterable[Sequence[Any]]) -> None:
        rows = [tuple(r) for r in rows]
        if rows:
            self.cur.executemany(self.sql(text), rows)

    def fetchone(self):
        return self.cur.fetchone()

    def fetchall(self) -> list:
        return self.cur.fetchall()

    def scalar(self, text: str, args: Sequence[Any] = ()):
        row = self.execute(text, args).fetchone()
        return row[0] if row else None

    def __iter__(self):
        return iter(self.cur.fetchall())

    def close(self) -> None:
        self.cur.close()


def marks(n: int) -> str:
    """`?, ?, ...` for an IN list of n values."""
    return ", ".join("?" * n)


def batches(items: Sequence, size: int = 500):
    for i in range(0, len(items), size):
        yield items[i : i + size]
