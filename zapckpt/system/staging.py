"""Private scratch directories for image sets (CRIU dumps, restores, exports).

They hold other programs' memory, environment secrets included, so:
- the base, `/dev/shm/zapckpt.<tag>` (tmpfs: nothing slow in the frozen window), is made by
  root 0700, and one that root does not own, that others can enter or that is a symlink is
  refused, never used (a local user could have made it first: /dev/shm is everyone's);
- each operation gets a directory under it with an unpredictable name, and holds an flock on
  it while it lives: recovery removes exactly the ones nobody holds (their zap died).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from zapckpt.common.errors import ZapError
from zapckpt.state import StateDir


def base(state: StateDir) -> Path:
    """The staging base, made if missing, refused if it is not root's own."""
    path = state.staging
    try:
        path.mkdir(mode=0o700, parents=False)
    except FileExistsError:
        pass
    except FileNotFoundError:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.mkdir(mode=0o700, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise ZapError(f"refusing the staging directory {path}: it is not root's own directory "
                       f"({stat.filemode(st.st_mode)}, owner uid {st.st_uid}); remove it (someone else may "
                       f"have made it to read checkpoint images)")  # fmt: skip
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)  # made by an older zap: only root could have
    return path


@contextmanager
def stage(state: StateDir, kind: str) -> Iterator[Path]:
    """A fresh private directory (0700, unpredictable name) for one operation, removed after."""
    d = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=base(state)))
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
        os.close(fd)


def orphans(state: StateDir) -> list[Path]:
    """Staging directories whose operation is gone (nobody holds their lock)."""
    path = state.staging
    if not path.is_dir() or path.is_symlink():
        return []
    found = []
    for d in sorted(path.iterdir()):
        try:
            fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            found.append(d)  # not a directory of ours: nothing lives there
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            found.append(d)
        except BlockingIOError:
            pass  # a live operation's
        finally:
            os.close(fd)
    return found


def remove_orphans(state: StateDir) -> list[Path]:
    gone = orphans(state)
    for d in gone:
        if d.is_dir() and not d.is_symlink():
            shutil.rmtree(d, ignore_errors=True)
        else:
            d.unlink(missing_ok=True)
    return gone
