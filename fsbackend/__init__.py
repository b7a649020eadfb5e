"""Snapshot backends: one abstract interface (base.SnapshotBackend), one module per filesystem."""

from .base import BackendError, Capabilities, SnapshotBackend, SnapshotInfo


def get_backend(name: str) -> SnapshotBackend:
    if name == "btrfs":
        from .btrfs import BtrfsBackend

        return BtrfsBackend()
    if name == "nilfs":
        from .nilfs import NilfsBackend

        return NilfsBackend()
    raise BackendError(f"unknown snapshot backend {name!r} (known: btrfs, nilfs)")


__all__ = ["BackendError", "Capabilities", "SnapshotBackend", "SnapshotInfo", "get_backend"]
