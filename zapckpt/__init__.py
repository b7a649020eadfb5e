"""zapckpt: atomic checkpoints of a pod's processes (CRIU) together with its files (btrfs)."""

__version__ = "0.1.0"
