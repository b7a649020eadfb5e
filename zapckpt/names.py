"""Names of pods: short, safe in paths, unambiguous in references."""

import re

from zapckpt.common.errors import UsageError

NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")


def is_valid(name: str) -> bool:
    return isinstance(name, str) and NAME_RE.fullmatch(name) is not None


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name or ""):
        raise UsageError(
            f"invalid pod name {name!r}: use 1-63 characters a-z 0-9 _ . -, starting with a letter or digit"
        )
    return name
