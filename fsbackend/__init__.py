"""Snapshot backends: one abstract interface (base.SnapshotBackend), one module per filesystem."""

from .base import BackendError, Capabilities, SnapshotBackend, SnapshotInfo


def get_backend(name: str) -> SnapshotBackend:
    if name == "btrfs":
        from .btrfs import BtrfsBackend

        return BtrfsBackend()
    raise BackendError(f"unknown snapshot backend {name!r} (known: btrfs)")


__all__ = ["BackendError", "Capabilities", "SnapshotBackend", "SnapshotInfo", "get_backend"]
