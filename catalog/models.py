"""Catalog tables. A checkpoint row exists only for a pair whose both halves succeeded:
the CRIU image set is stored and the read-only filesystem snapshot exists."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import JSON, BigInteger, DateTime, ForeignKey, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# Sizes, offsets, generations, clock ticks: 64-bit in PostgreSQL (migration 0014), SQLite's
# INTEGER (which a rowid primary key must be) everywhere else.
Int64 = BigInteger().with_variant(Integer(), "sqlite")

FLEET = 0  # Setting.host_id of a setting of the whole fleet


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Host(Base):
    """A state directory taking part in the catalog: the embedded SQLite catalog has one, a
    PostgreSQL catalog one per machine of the fleet (catalog/hosts.py)."""

    __tablename__ = "hosts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    # Kept in the state directory's config.json too: proves a state directory is this host.
    token: Mapped[str] = mapped_column(String(32))
    address: Mapped[Optional[str]] = mapped_column(String(64))
    state_dir: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_seen: Mapped[Optional[datetime]] = mapped_column(DateTime(timezone=True))


class Setting(Base):
    """Key/value settings of one host (where its pool lives, its bridge) or of the fleet
    (host_id FLEET: the image store)."""

    __tablename__ = "settings"
    host_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Pod(Base):
    __tablename__ = "pods"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Unique in the whole fleet: NAME@N means one checkpoint wherever it is read.
    name: Mapped[str] = mapped_column(String(63), unique=True)
    # The host that runs it (hosts.id); only that host starts, stops, restores or checkpoints
    # it. `zap host adopt` moves it to another host, which fences the old one out.
    host_id: Mapped[Optional[int]] = mapped_column(Integer, index=True)
    adopted_from: Mapped[Optional[str]] = mapped_column(String(63))  # the lost host's name
    adopted_at: Mapped[Optional[datetime]] = mapped_column(DateTime(timezone=True))
    # What the lost host, if it comes back, still has to take down (ops/adopt.py retire): its
    # copy's init as that machine knew it, its volume and network namespace.
    retire_pending: Mapped[bool] = mapped_column(default=False, server_default="0")
    adopted_pid: Mapped[Optional[int]] = mapped_column(Integer)
    adopted_start: Mapped[Optional[int]] = mapped_column(Int64)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Host path of the pod's own subvolume.
    volume: Mapped[str] = mapped_column(Text)
    # Where the processes see the volume: the volume itself for a pod made by `zap run`, the
    # original pod's path for a branch (bind-mounted there in the branch's mount namespace).
    mount_path: Mapped[str] = mapped_column(Text)
    # Where the pod's root filesystem came from (its --rootfs: "debian:bookworm", "/srv/tree") for a pod
    # whose processes run chrooted in its volume; None for a pod that only has a data volume.
    rootfs: Mapped[Optional[str]] = mapped_column(Text)
    command: Mapped[list[Any]] = mapped_column(default=list)
    # Networking: "pod" (own network namespace, `address` on the host bridge), "none" (own
    # namespace, loopback only) or "host" (the host's namespace: not branchable while listening).
    net: Mapped[str] = mapped_column(String(8), default="pod", server_default="host")
    address: Mapped[Optional[str]] = mapped_column(String(64))
    # Published ports: [{"host_ip", "host_port", "pod_port", "proto"}].
    ports: Mapped[list[Any]] = mapped_column(default=list, server_default="[]")
    # Declared host directories: [{"host", "pod"}]; shared with the host, never rolled back.
    volumes: Mapped[list[Any]] = mapped_column(default=list, server_default="[]")
    # A pod without --rootfs sees `.zap/tmp` of its volume as /tmp (rolled back with it) instead
    # of the host's; False for pods made before that existed (their checkpoints expect the host's).
    private_tmp: Mapped[bool] = mapped_column(default=False, server_default="0")
    # A pod without --rootfs sees the host's tree read-only, but for its volume, its private /tmp,
    # /dev/shm, /dev/pts, /proc and declared volumes; True: writable (`--host-writable`, and pods
    # made before that existed), so what it writes there is never rolled back.
    host_writable: Mapped[bool] = mapped_column(default=False, server_default="1")
    # The pod's pid 1 is a small init (catatonit) that runs the command, forwards it signals and
    # reaps orphans; False: the command itself is pid 1 (`--no-init`, and pods made before).
    init: Mapped[bool] = mapped_column(default=True, server_default="0")
    # The inode of the pipe that is the running processes' stdout and stderr (pod/console.py);
    # None for pods whose console is still `.zap/console.log` in the volume (made before).
    console_pipe: Mapped[Optional[int]] = mapped_column(Int64)
    # Resource limits (None: none): RAM in bytes, CPU time in CPUs (system/cgroups.py).
    memory_limit: Mapped[Optional[int]] = mapped_column(Int64)
    cpus: Mapped[Optional[float]] = mapped_column()
    # What the supervisor does when the pod ends by itself (ops/restart.py): "no", "on-failure"
    # (at most restart_max times in a row, if set), "always"; restarts done since the last start.
    restart: Mapped[str] = mapped_column(String(16), default="no", server_default="no")
    restart_max: Mapped[Optional[int]] = mapped_column(Integer)
    restart_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # How its init (its command's status) ended last, as the supervisor saw it (None: not seen).
    exit_code: Mapped[Optional[int]] = mapped_column(Integer)
    exited_at: Mapped[Optional[datetime]] = mapped_column(DateTime(timezone=True))
    # Running while its memory still comes in, or the state a restore replaced is still being
    # stored (ops/restore.py): `zap ps` says "restoring", and commands on the pod wait for it.
    restoring: Mapped[bool] = mapped_column(default=False, server_default="0")
    # What zap did to the pod on its own that its user must hear of (a restore undone after it
    # was reported), until the pod is next restored or started.
    note: Mapped[Optional[str]] = mapped_column(Text)
    # The --stop checkpoint whose CRIU network lock still holds the pod's external connections
    # (restoring exactly that checkpoint brings them back; anything else releases them).
    net_locked_by: Mapped[Optional[str]] = mapped_column(String(12))
    env: Mapped[dict[str, Any]] = mapped_column(default=dict)
    cwd: Mapped[str] = mapped_column(Text)
    # What the user asked for: "running" or "stopped"; the live state is computed from the pid.
    desired_state: Mapped[str] = mapped_column(String(16), default="running")
    # The highest checkpoint number ever given out: numbers are never reused.
    last_seq: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    init_pid: Mapped[Optional[int]] = mapped_column(Integer)
    init_starttime: Mapped[Optional[int]] = mapped_column(Int64)
    origin_checkpoint_id: Mapped[Optional[str]] = mapped_column(
        ForeignKey("checkpoints.id", ondelete="SET NULL", use_alter=True, name="fk_pods_origin")
    )
    head_checkpoint_id: Mapped[Optional[str]] = mapped_column(
        ForeignKey("checkpoints.id", ondelete="SET NULL", use_alter=True, name="fk_pods_head")
    )
    # `zap suspend` ended the pod with this (--stop) checkpoint; `zap resume` restores it.
    suspended_by: Mapped[Optional[str]] = mapped_column(String(12))

    checkpoints: Mapped[list["Checkpoint"]] = relationship(
        back_populates="pod", foreign_keys="Checkpoint.pod_id", order_by="Checkpoint.seq"
    )
    origin: Mapped[Optional["Checkpoint"]] = relationship(foreign_keys=[origin_checkpoint_id])
    head: Mapped[Optional["Checkpoint"]] = relationship(foreign_keys=[head_checkpoint_id])
    # Read only: the watches table is written through its own rows (ops/watch.py); the
    # database removes a pod's watch with the pod.
    watch: Mapped[Optional["Watch"]] = relationship(viewonly=True, uselist=False)
    host: Mapped[Optional[Host]] = relationship(primaryjoin="foreign(Pod.host_id) == Host.id", viewonly=True)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("pod_id", "seq", name="uq_checkpoints_pod_seq"),)

    id: Mapped[str] = mapped_column(String(12), primary_key=True)
    pod_id: Mapped[int] = mapped_column(ForeignKey("pods.id", ondelete="CASCADE"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    parent_id: Mapped[Optional[str]] = mapped_column(
        ForeignKey("checkpoints.id", ondelete="SET NULL"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    message: Mapped[str] = mapped_column(Text, default="")
    # "manual", or "auto" for the ones zap takes itself (e.g. before a restore).
    kind: Mapped[str] = mapped_column(String(16), default="manual")
    backend: Mapped[str] = mapped_column(String(16))
    # The host that took it: snapshot_path is a path on that host. Another host has its own
    # copy, received from the store, at <its pool>/snapshots/<id> (zapckpt/store/volumes.py).
    host_id: Mapped[Optional[int]] = mapped_column(Integer)
    snapshot_path: Mapped[str] = mapped_column(Text)
    snapshot_generation: Mapped[Optional[int]] = mapped_column(Int64)
    # Its volume as a btrfs send stream in the image store (volume_streams.id), None where the
    # store keeps no volumes (a local store, NILFS2).
    stream_id: Mapped[Optional[str]] = mapped_column(String(12), index=True)
    # How the CRIU image set is kept: None (files-only checkpoint of a pod that was not
    # running), "cas" (chunks in the content-addressed store, listed in image_files) or "dir"
    # (schema 0001: one zstd file per image under image_dir).
    image_format: Mapped[Optional[str]] = mapped_column(String(8))
    image_dir: Mapped[Optional[str]] = mapped_column(Text)
    raw_bytes: Mapped[int] = mapped_column(Int64, default=0)
    stored_bytes: Mapped[int] = mapped_column(Int64, default=0)
    frozen_ms: Mapped[Optional[float]] = mapped_column()
    dump_ms: Mapped[Optional[float]] = mapped_column()
    fs_snapshot_ms: Mapped[Optional[float]] = mapped_column()
    total_ms: Mapped[Optional[float]] = mapped_column()
    # An incremental dump: how long the pre-dump before it stopped the pod (CRIU's frozen time),
    # the frozen window then writing only the pages written since. None: a full dump.
    predump_ms: Mapped[Optional[float]] = mapped_column()
    # The pack and the volume stream going up to the fleet's store (None: a local store).
    upload_ms: Mapped[Optional[float]] = mapped_column()
    # The checkpoint ended the pod (`--stop`): its external connections were kept locked.
    stopped: Mapped[bool] = mapped_column(default=False, server_default="0")
    # The CRIU dump's run id: its network-lock table is `inet CRIU-<id>`.
    criu_run_id: Mapped[Optional[str]] = mapped_column(String(64))
    # One entry per dumped process: host pid, pid inside the pod, command line, cwd.
    processes: Mapped[list[Any]] = mapped_column(default=list)
    # The pages a lazy restore of it saw faulted first (zstd-compressed (pid, address) pairs):
    # the next lazy restore brings them in with the restore itself.
    working_set: Mapped[Optional[bytes]] = mapped_column(LargeBinary, deferred=True)

    pod: Mapped[Pod] = relationship(back_populates="checkpoints", foreign_keys=[pod_id])
    parent: Mapped[Optional["Checkpoint"]] = relationship(remote_side=[id])
    # the database deletes a removed checkpoint's tags (ON DELETE CASCADE)
    tags: Mapped[list["Tag"]] = relationship(order_by="Tag.name", viewonly=True)
    host: Mapped[Optional[Host]] = relationship(primaryjoin="foreign(Checkpoint.host_id) == Host.id", viewonly=True)

    @property
    def tag_names(self) -> list[str]:
        return [t.name for t in self.tags]

    @property
    def ref(self) -> str:
        return f"{self.pod.name}@{self.seq}"

    @property
    def has_images(self) -> bool:
        return self.image_format is not None


class Tag(Base):
    """A person's name for one checkpoint of a pod (`zap tag`): NAME@TAG refers to it, `prune
    --keep-tag` keeps it. A tag names one checkpoint per pod; a checkpoint may have several."""

    __tablename__ = "tags"
    __table_args__ = (UniqueConstraint("pod_id", "name", name="uq_tags_pod_name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pod_id: Mapped[int] = mapped_column(ForeignKey("pods.id", ondelete="CASCADE"))
    checkpoint_id: Mapped[str] = mapped_column(ForeignKey("checkpoints.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(63))


class Pack(Base):
    """A file of zstd frames, one per chunk, appended by one ingest."""

    __tablename__ = "packs"
    id: Mapped[int] = mapped_column(Int64, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    size: Mapped[int] = mapped_column(Int64)
    # sha256 of the file: a copy fetched from an object store is checked against it (None: older packs)
    digest: Mapped[Optional[str]] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Chunk(Base):
    """A piece of image data, stored once: a page of a pages-*.img, or a whole small image."""

    __tablename__ = "chunks"
    id: Mapped[int] = mapped_column(Int64, primary_key=True)
    hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)  # sha256 of the raw data
    pack_id: Mapped[int] = mapped_column(Int64, ForeignKey("packs.id"), index=True)
    # The zstd frame that holds it (shared with the other new chunks of its group) and where
    # the chunk starts inside the decompressed frame.
    offset: Mapped[int] = mapped_column(Int64)
    length: Mapped[int] = mapped_column(Integer)  # the frame's stored (compressed) bytes
    start: Mapped[int] = mapped_column(Integer, default=0)
    raw_length: Mapped[int] = mapped_column(Integer)
    # How many chunk slots of all image_files rows name this chunk; 0 means garbage.
    refcount: Mapped[int] = mapped_column(Integer, default=0)


class Frame(Base):
    """One zstd frame of a pack (catalog/chunks.py): a uniform frame holds page-sized chunks,
    chunk id base + i at i * 4096, so a restore finds a checkpoint's pages from these rows."""

    __tablename__ = "frames"
    pack_id: Mapped[int] = mapped_column(Int64, ForeignKey("packs.id"), primary_key=True)
    offset: Mapped[int] = mapped_column(Int64, primary_key=True)
    length: Mapped[int] = mapped_column(Integer)
    base: Mapped[int] = mapped_column(Int64, index=True)
    last: Mapped[int] = mapped_column(Int64)
    uniform: Mapped[bool] = mapped_column()


class ImageFile(Base):
    """One image file of a checkpoint: its name and the chunks that reassemble it."""

    __tablename__ = "image_files"
    checkpoint_id: Mapped[str] = mapped_column(ForeignKey("checkpoints.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    raw_bytes: Mapped[int] = mapped_column(Int64)
    # zstd-compressed array of little-endian int64 chunk ids, in file order.
    chunk_ids: Mapped[bytes] = mapped_column(LargeBinary)


class Watch(Base):
    """`zap watch POD`: the supervisor checkpoints the pod every every_s seconds and then keeps
    its watch checkpoints (kind "watch") to the policy."""

    __tablename__ = "watches"
    pod_id: Mapped[int] = mapped_column(ForeignKey("pods.id", ondelete="CASCADE"), primary_key=True)
    every_s: Mapped[float] = mapped_column()
    keep_last: Mapped[Optional[int]] = mapped_column(Integer)
    keep_hourly: Mapped[Optional[int]] = mapped_column(Integer)
    keep_daily: Mapped[Optional[int]] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_at: Mapped[Optional[datetime]] = mapped_column(DateTime(timezone=True))
    last_result: Mapped[Optional[str]] = mapped_column(Text)  # one line: what the last tick did
    last_ok: Mapped[Optional[bool]] = mapped_column()
    taken: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    skipped: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    failed: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The pod at its last watched checkpoint: CPU time of its processes (clock ticks) and its
    # volume's generation. Both unchanged at a tick: nothing happened, nothing to record.
    seen_cpu: Mapped[Optional[int]] = mapped_column(Int64)
    seen_generation: Mapped[Optional[int]] = mapped_column(Int64)

    pod: Mapped[Pod] = relationship()


class Intent(Base):
    """An operation in progress (checkpoint, restore, branch, import): written and committed
    before its first change to the pool, the store or the processes, removed after its last.
    A row whose owner process is gone is an interrupted operation that recovery finishes or
    undoes from `data` (what it made or was about to make)."""

    __tablename__ = "intents"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    op: Mapped[str] = mapped_column(String(16))
    pod: Mapped[str] = mapped_column(String(63))
    # The host it runs on: only that host settles it (its processes, pool and staging are there).
    host_id: Mapped[Optional[int]] = mapped_column(Integer)
    # The zap process doing it: (pid, start time in clock ticks), so a reused pid is not it.
    owner_pid: Mapped[int] = mapped_column(Integer)
    owner_start: Mapped[int] = mapped_column(Int64)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)


class VolumeStream(Base):
    """A checkpoint's volume as a btrfs send stream in the image store (zstd-compressed object
    `object`), incremental against its parent's snapshot when parent_id is set. A stream stays
    while a checkpoint names it or another stream is incremental on it."""

    __tablename__ = "volume_streams"
    id: Mapped[str] = mapped_column(String(12), primary_key=True)  # the checkpoint it was sent from
    object: Mapped[str] = mapped_column(Text)
    parent_id: Mapped[Optional[str]] = mapped_column(String(12), index=True)
    bytes: Mapped[int] = mapped_column(BigInteger)
    digest: Mapped[str] = mapped_column(String(64))  # sha256 of the object, checked before a receive
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
