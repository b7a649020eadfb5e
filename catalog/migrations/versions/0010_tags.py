"""tags: a person's names for checkpoints (`zap tag`, NAME@TAG, `prune --keep-tag`)

Revision ID: 0010
Revises: 0009
"""
import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tags",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("pod_id", sa.Integer(), sa.ForeignKey("pods.id", ondelete="CASCADE"), nullable=False),
        sa.Column("checkpoint_id", sa.String(12), sa.ForeignKey("checkpoints.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.UniqueConstraint("pod_id", "name", name="uq_tags_pod_name"),
    )
    op.create_index("ix_tags_checkpoint_id", "tags", ["checkpoint_id"])


def downgrade() -> None:
    op.drop_index("ix_tags_checkpoint_id", table_name="tags")
    op.drop_table("tags")
