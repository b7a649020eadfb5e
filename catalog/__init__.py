"""The catalog (SQLite embedded, PostgreSQL for a fleet): typed SQLAlchemy models, Alembic
migrations, and every query zap makes: nothing outside this package reads or writes it.

The models and the engine are imported on first use (PEP 562), so `catalog.fastread` can serve
`zap ps` and `zap list` without importing SQLAlchemy at all."""

from importlib import import_module

_WHERE = {"Catalog": ".db", **{n: ".models" for n in
          ("Base", "Checkpoint", "Chunk", "FLEET", "Host", "ImageFile", "Intent", "Pack", "Pod", "Setting", "Tag",
           "VolumeStream", "Watch")}}  # fmt: skip


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_WHERE)
