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


# A tag starts with a letter, so NAME@TAG never reads as NAME@N or a range NAME@A-B.
TAG_RE = re.compile(r"[a-z][a-z0-9_.-]{0,62}")


def check_tag(tag: str) -> str:
    if not TAG_RE.fullmatch(tag or "") or tag == "latest":
        raise UsageError(f"invalid tag {tag!r}: use 1-63 characters a-z 0-9 _ . -, starting with a letter "
                         "(and not 'latest')")  # fmt: skip
    return tag


def check_host_name(name: str) -> str:
    """A host of a fleet: the same rules as a pod's name (it names directories and locks too)."""
    if not NAME_RE.fullmatch(name or ""):
        raise UsageError(f"invalid host name {name!r}: use 1-63 characters a-z 0-9 _ . -, starting with a letter or digit")
    return name
