"""What a failure of the catalog's database means, in one line with the fix: the words of libpq
or SQLite alone tell a user little."""

from __future__ import annotations

import re


def _driver_error(e: BaseException) -> BaseException:
    return getattr(e, "orig", None) or e


def is_catalog_error(e: BaseException) -> bool:
    """An error of the database itself (unreachable, refused, full), not of zap's logic."""
    mod = type(_driver_error(e)).__module__.split(".")[0]
    if mod in ("psycopg", "sqlite3"):
        return True
    try:
        from sqlalchemy.exc import DBAPIError, OperationalError
    except ImportError:  # pragma: no cover
        return False
    return isinstance(e, (OperationalError, DBAPIError))


def explain(e: BaseException, where: str, embedded: bool) -> str:
    """One line: what failed, why, what to do."""
    orig = _driver_error(e)
    text = " ".join(str(orig).split())
    if embedded:
        return f"the catalog {where} cannot be written: {text or type(orig).__name__} (a full disk? see `df {where}`)"
    reason = text.rsplit(" failed: ", 1)[-1]
    reason = re.sub(r"^(FATAL|ERROR):\s+", "", reason)
    if m := re.search(r'database "([^"]+)" does not exist', reason):
        return (f"the catalog database {m.group(1)!r} does not exist at {where}: create it (`createdb {m.group(1)}` as "
                f"a PostgreSQL administrator); zap creates its tables itself")  # fmt: skip
    if re.search(r'role "[^"]+" does not exist|password authentication failed|no password supplied|'
                 r"authentication failed|pg_hba.conf", reason):  # fmt: skip
        return (f"the catalog at {where} refused the login: {reason} (check the user and password of the URL, "
                f"~/.pgpass, or the server's pg_hba.conf)")  # fmt: skip
    if re.search(r"permission denied for (schema|database|table)", reason):
        return (f"the catalog's user may not create or change zap's tables at {where}: {reason} (GRANT CREATE ON "
                f"SCHEMA public TO that user, or give the database to it)")  # fmt: skip
    if re.search(r"No such file or directory|Connection refused|could not translate host name|timeout expired|"
                 r"Network is unreachable|No route to host|server closed the connection|terminating connection|"
                 r"connection is (bad|closed)|the connection is lost|consuming input failed", text):  # fmt: skip
        return (f"cannot reach the catalog at {where}: {reason.split(' Is the server')[0]} (is PostgreSQL running "
                f"there, and the URL right?)")  # fmt: skip
    return f"the catalog at {where} failed: {reason or type(orig).__name__}"
