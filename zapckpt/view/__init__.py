"""The history as a file system: nodes.py and tree.py (plain Python), fuseops.py (pyfuse3),
mount.py (mounting and the daemon)."""
