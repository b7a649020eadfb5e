"""Sizes as people write them: 64M, 1G, 512MiB, 2T or a number of bytes (binary units)."""

from __future__ import annotations

import re

_SHIFT = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}


def parse_size(text: str) -> int:
    """The number of bytes; ValueError for anything else."""
    m = re.fullmatch(r"(\d{1,12})([KMGT]?)(i?B)?", text.strip(), re.IGNORECASE | re.ASCII)
    if not m:
        raise ValueError(f"{text!r} is not a size like 64M, 1G or 1048576")
    return int(m.group(1)) << _SHIFT[m.group(2).upper()]
