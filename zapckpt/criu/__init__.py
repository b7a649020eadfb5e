"""CRIU: running it (runner.py), reading its image files (images.py), and the functional probe
that decides whether a CRIU works on this kernel (probe.py)."""
