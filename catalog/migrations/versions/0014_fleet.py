"""a fleet: hosts, the host of each pod, checkpoint and intent, host-scoped settings, volume streams
in the store, 64-bit sizes in PostgreSQL

Revision ID: 0014
Revises: 0013
"""
import os
import secrets
import socket
from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

# Sizes, offsets, inode and generation numbers, clock ticks: 64-bit in PostgreSQL, as SQLite's
# INTEGER always is (a 4 GiB pages image or memory limit does not fit in PostgreSQL's integer).
WIDE = {
    "pods": ("memory_limit", "init_starttime", "console_pipe"),
    "checkpoints": ("raw_bytes", "stored_bytes", "snapshot_generation"),
    "packs": ("id", "size"),
    "chunks": ("id", "pack_id", "offset"),
    "image_files": ("raw_bytes",),
    "watches": ("seen_cpu", "seen_generation"),
    "intents": ("owner_start",),
}


def upgrade() -> None:
    bind = op.get_bind()
    pg = bind.dialect.name == "postgresql"
    op.create_table(
        "hosts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(63), nullable=False, unique=True),
        # Proves a state directory is this host (kept in its config.json): a second state
        # directory cannot take over a name by mistake.
        sa.Column("token", sa.String(32), nullable=False),
        sa.Column("address", sa.String(64), nullable=True),
        sa.Column("state_dir", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=True),
    )
    # Plain ADD COLUMNs (a batch copy of pods would drop its checkpoints through the cascade).
    op.add_column("pods", sa.Column("host_id", sa.Integer(), nullable=True))
    op.add_column("pods", sa.Column("adopted_from", sa.String(63), nullable=True))
    op.add_column("pods", sa.Column("adopted_at", sa.DateTime(timezone=True), nullable=True))
    # What the host it was adopted from still has to take down when it comes back: its copy's
    # init (pid, start time on that machine), its volume, its network namespace.
    op.add_column("pods", sa.Column("retire_pending", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column("pods", sa.Column("adopted_pid", sa.Integer(), nullable=True))
    op.add_column("pods", sa.Column("adopted_start", sa.BigInteger(), nullable=True))
    op.add_column("checkpoints", sa.Column("host_id", sa.Integer(), nullable=True))
    op.add_column("checkpoints", sa.Column("stream_id", sa.String(12), nullable=True))
    # how long its pack and volume stream took to go up to a remote store (after the thaw)
    op.add_column("checkpoints", sa.Column("upload_ms", sa.Float(), nullable=True))
    op.add_column("intents", sa.Column("host_id", sa.Integer(), nullable=True))
    # sha256 of a pack file: a copy fetched from an object store is checked against it
    op.add_column("packs", sa.Column("digest", sa.String(64), nullable=True))
    op.create_index("ix_pods_host_id", "pods", ["host_id"])
    op.create_index("ix_checkpoints_stream_id", "checkpoints", ["stream_id"])
    op.create_table(
        "volume_streams",
        sa.Column("id", sa.String(12), primary_key=True),
        sa.Column("object", sa.Text(), nullable=False),
        sa.Column("parent_id", sa.String(12), nullable=True),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_volume_streams_parent_id", "volume_streams", ["parent_id"])
    # Settings of one host (host_id) or of the whole fleet (host_id 0).
    op.create_table(
        "settings_v2",
        sa.Column("host_id", sa.Integer(), primary_key=True),
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
    )
    if pg:
        for table, cols in WIDE.items():
            for col in cols:
                op.alter_column(table, col, type_=sa.BigInteger())
        for table in ("packs", "chunks"):
            op.execute(f"ALTER SEQUENCE IF EXISTS {table}_id_seq AS bigint")
    # A catalog in use before fleets: everything in it is one host's, the machine this runs on
    # (a SQLite catalog is only ever opened by its own state directory).
    if bind.execute(sa.text("SELECT (SELECT count(*) FROM pods) + (SELECT count(*) FROM settings)")).scalar():
        db = bind.engine.url.database or ""
        state_dir = os.path.dirname(os.path.abspath(db)) if db else ""
        bind.execute(sa.text("INSERT INTO hosts (id, name, token, state_dir, created_at) VALUES (1, :n, :t, :d, :c)"),
                     {"n": (socket.gethostname() or "localhost")[:63], "t": secrets.token_hex(16), "d": state_dir,
                      "c": datetime.now(timezone.utc)})  # fmt: skip
        if pg:
            op.execute("SELECT setval('hosts_id_seq', 1)")
        for table in ("pods", "checkpoints", "intents"):
            op.execute(f"UPDATE {table} SET host_id = 1")
        op.execute("INSERT INTO settings_v2 (host_id, key, value) SELECT 1, key, value FROM settings")
    op.drop_table("settings")
    op.rename_table("settings_v2", "settings")


def downgrade() -> None:
    op.rename_table("settings", "settings_v2")
    op.create_table("settings", sa.Column("key", sa.String(64), primary_key=True),
                    sa.Column("value", sa.Text(), nullable=False))  # fmt: skip
    op.execute("INSERT INTO settings (key, value) SELECT key, value FROM settings_v2 WHERE host_id = 1")
    op.drop_table("settings_v2")
    op.drop_index("ix_volume_streams_parent_id", "volume_streams")
    op.drop_table("volume_streams")
    op.drop_index("ix_checkpoints_stream_id", "checkpoints")
    op.drop_index("ix_pods_host_id", "pods")
    with op.batch_alter_table("intents") as batch:
        batch.drop_column("host_id")
    with op.batch_alter_table("packs") as batch:
        batch.drop_column("digest")
    with op.batch_alter_table("checkpoints") as batch:
        batch.drop_column("upload_ms")
        batch.drop_column("stream_id")
        batch.drop_column("host_id")
    with op.batch_alter_table("pods") as batch:
        for col in ("adopted_start", "adopted_pid", "retire_pending", "adopted_at", "adopted_from", "host_id"):
            batch.drop_column(col)
    op.drop_table("hosts")
