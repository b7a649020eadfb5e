"""Pods: starting one in its own namespaces and volume (lifecycle.py, init.py), its mounts
(mounts.py), system pods' roots (rootfs.py), its live state (status.py)."""
