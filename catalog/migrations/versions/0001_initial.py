"""initial schema: settings, pods, checkpoints

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "settings",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
    )
    # pods and checkpoints reference each other; SQLite resolves foreign keys at use, not at
    # CREATE time, so plain creation order works there; PostgreSQL gets the two after both tables.
    inline = op.get_bind().dialect.name == "sqlite"

    def later_fk(name: str):
        return [sa.ForeignKey("checkpoints.id", ondelete="SET NULL", name=name)] if inline else []

    op.create_table(
        "pods",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(63), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("volume", sa.Text(), nullable=False),
        sa.Column("mount_path", sa.Text(), nullable=False),
        sa.Column("command", sa.JSON(), nullable=False),
        sa.Column("env", sa.JSON(), nullable=False),
        sa.Column("cwd", sa.Text(), nullable=False),
        sa.Column("desired_state", sa.String(16), nullable=False),
        sa.Column("init_pid", sa.Integer(), nullable=True),
        sa.Column("init_starttime", sa.Integer(), nullable=True),
        sa.Column("origin_checkpoint_id", sa.String(12), *later_fk("fk_pods_origin"), nullable=True),
        sa.Column("head_checkpoint_id", sa.String(12), *later_fk("fk_pods_head"), nullable=True),
    )
    op.create_table(
        "checkpoints",
        sa.Column("id", sa.String(12), primary_key=True),
        sa.Column("pod_id", sa.Integer(), sa.ForeignKey("pods.id", ondelete="CASCADE"), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column(
            "parent_id", sa.String(12), sa.ForeignKey("checkpoints.id", ondelete="SET NULL"), nullable=True
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("backend", sa.String(16), nullable=False),
        sa.Column("snapshot_path", sa.Text(), nullable=False),
        sa.Column("snapshot_generation", sa.Integer(), nullable=True),
        sa.Column("image_dir", sa.Text(), nullable=True),
        sa.Column("raw_bytes", sa.Integer(), nullable=False),
        sa.Column("stored_bytes", sa.Integer(), nullable=False),
        sa.Column("frozen_ms", sa.Float(), nullable=True),
        sa.Column("dump_ms", sa.Float(), nullable=True),
        sa.Column("fs_snapshot_ms", sa.Float(), nullable=True),
        sa.Column("total_ms", sa.Float(), nullable=True),
        sa.Column("processes", sa.JSON(), nullable=False),
        sa.UniqueConstraint("pod_id", "seq", name="uq_checkpoints_pod_seq"),
    )
    op.create_index("ix_checkpoints_pod_id", "checkpoints", ["pod_id"])
    op.create_index("ix_checkpoints_parent_id", "checkpoints", ["parent_id"])
    if not inline:
        for name, col in (("fk_pods_origin", "origin_checkpoint_id"), ("fk_pods_head", "head_checkpoint_id")):
            op.create_foreign_key(name, "pods", "checkpoints", [col], ["id"], ondelete="SET NULL")


def downgrade() -> None:
    op.drop_index("ix_checkpoints_parent_id", "checkpoints")
    op.drop_index("ix_checkpoints_pod_id", "checkpoints")
    op.drop_table("checkpoints")
    op.drop_table("pods")
    op.drop_table("settings")
