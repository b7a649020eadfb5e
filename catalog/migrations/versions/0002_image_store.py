"""content-addressed image store: packs, chunks, image_files; checkpoints.image_format; pods.last_seq

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "packs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "chunks",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("hash", sa.LargeBinary(32), nullable=False, unique=True),
        sa.Column("pack_id", sa.Integer(), sa.ForeignKey("packs.id"), nullable=False),
        sa.Column("offset", sa.Integer(), nullable=False),
        sa.Column("length", sa.Integer(), nullable=False),
        sa.Column("start", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("raw_length", sa.Integer(), nullable=False),
        sa.Column("refcount", sa.Integer(), nullable=False),
    )
    op.create_index("ix_chunks_pack_id", "chunks", ["pack_id"])
    op.create_table(
        "image_files",
        sa.Column("checkpoint_id", sa.String(12), sa.ForeignKey("checkpoints.id", ondelete="CASCADE"),
                  primary_key=True),  # fmt: skip
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("raw_bytes", sa.Integer(), nullable=False),
        sa.Column("chunk_ids", sa.LargeBinary(), nullable=False),
    )
    with op.batch_alter_table("checkpoints") as batch:
        batch.add_column(sa.Column("image_format", sa.String(8), nullable=True))
    # Checkpoint numbers are never reused, even after the newest ones are removed.
    with op.batch_alter_table("pods") as batch:
        batch.add_column(sa.Column("last_seq", sa.Integer(), nullable=False, server_default="0"))
    op.execute("UPDATE pods SET last_seq = COALESCE((SELECT MAX(seq) FROM checkpoints WHERE pod_id = pods.id), 0)")
    # Image sets written by schema 0001 are one zstd file per image in image_dir.
    op.execute("UPDATE checkpoints SET image_format = 'dir' WHERE image_dir IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table("pods") as batch:
        batch.drop_column("last_seq")
    with op.batch_alter_table("checkpoints") as batch:
        batch.drop_column("image_format")
    op.drop_table("image_files")
    op.drop_index("ix_chunks_pack_id", "chunks")
    op.drop_table("chunks")
    op.drop_table("packs")
