"""Modules imported on first use. `zap --help` must not pay for importing SQLAlchemy, CRIU
handling and every operation, so each command module names what it calls through these
proxies, and only the command that runs imports its part of zap."""

from __future__ import annotations

from importlib import import_module


class LazyModule:
    __slots__ = ("_name",)

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        return getattr(import_module(self._name), attr)  # after the first call, a dict lookup

    def __repr__(self) -> str:
        return f"<lazy module {self._name}>"


def lazy(name: str) -> LazyModule:
    return LazyModule(name)
