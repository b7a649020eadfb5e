"""The state directory and what lives in it.

    $ZAP_HOME (default /var/lib/zapckpt)
      config.json         this state directory's catalog URL (if not catalog.db) and host name
      catalog.db          SQLite catalog (the embedded default)
      pool.img, pool/     the embedded loop-file btrfs pool and its mount point
      store/packs/        the image store (chunks in zstd frames; index in the catalog)
      logs/               CRIU logs of every dump and restore
      mnt/<name>          where pod <name> and its branches see their volume
      locks/              one lock file per pod
    inside the pool:
      pods/<name>         each pod's volume (a subvolume)
      snapshots/<id>      each checkpoint's read-only snapshot
    /dev/shm/zapckpt.<hash>/  tmpfs staging for image sets during dump and restore
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOME = "/var/lib/zapckpt"
CONFIG = "config.json"


@dataclass(frozen=True)
class StateDir:
    root: Path

    @classmethod
    def from_env(cls) -> "StateDir":
        return cls(Path(os.environ.get("ZAP_HOME") or DEFAULT_HOME).absolute())

    @property
    def catalog_db(self) -> Path:
        return self.root / "catalog.db"

    def config(self) -> dict:
        """What `zap init` wrote into config.json ({} if nothing): "catalog", "host", "token"."""
        try:
            with open(self.root / CONFIG) as f:
                doc = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            from zapckpt.common.errors import ZapError

            raise ZapError(f"cannot read {self.root / CONFIG}: {e}") from None
        return doc if isinstance(doc, dict) else {}

    def write_config(self, doc: dict) -> None:
        """config.json replaced atomically, readable by root only (a catalog URL may hold a password)."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{CONFIG}.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with open(fd, "w") as f:
            json.dump(doc, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.root / CONFIG)

    def catalog_location(self) -> str | Path:
        """Where the catalog is: ZAP_CATALOG, else config.json's "catalog", else catalog.db here."""
        return os.environ.get("ZAP_CATALOG") or self.config().get("catalog") or self.catalog_db

    def reader_args(self) -> tuple[str | Path, str | None]:
        """(where the catalog is, this host's name) for catalog.fastread.open_current."""
        cfg = self.config()
        return os.environ.get("ZAP_CATALOG") or cfg.get("catalog") or self.catalog_db, cfg.get("host")

    @property
    def pool_image(self) -> Path:
        return self.root / "pool.img"

    @property
    def default_pool_mount(self) -> Path:
        return self.root / "pool"

    def mount_path(self, pod: str) -> Path:
        """Where a pod's processes see its volume (bind-mounted in the pod's mount namespace).
        Never a subvolume itself: volumes are renamed and deleted, and doing that to a mount
        point would silently detach the mounts of other pods' namespaces."""
        return self.root / "mnt" / pod

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def console_log(self, pod: str) -> Path:
        """What a pod wrote to its stdout and stderr (pod/console.py), outside its volume."""
        return self.root / "console" / f"{pod}.log"

    @property
    def locks(self) -> Path:
        return self.root / "locks"

    @property
    def staging(self) -> Path:
        """Image sets are dumped to and materialised in tmpfs: nothing slow in the frozen window."""
        override = os.environ.get("ZAP_STAGING")
        if override:
            return Path(override)
        tag = hashlib.sha1(str(self.root).encode()).hexdigest()[:10]
        shm = Path("/dev/shm")
        base = shm if shm.is_dir() and os.access(shm, os.W_OK) else self.root / "tmp"
        return base / f"zapckpt.{tag}"

    def ensure(self) -> None:
        for d in (self.root, self.logs, self.locks):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
