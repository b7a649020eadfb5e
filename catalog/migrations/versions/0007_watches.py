"""continuous checkpoints: watches (zap watch), pods.suspended_by (zap suspend/resume)

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "watches",
        sa.Column("pod_id", sa.Integer(), sa.ForeignKey("pods.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("every_s", sa.Float(), nullable=False),
        sa.Column("keep_last", sa.Integer(), nullable=True),
        sa.Column("keep_hourly", sa.Integer(), nullable=True),
        sa.Column("keep_daily", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_result", sa.Text(), nullable=True),
        sa.Column("last_ok", sa.Boolean(), nullable=True),
        sa.Column("taken", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("skipped", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("failed", sa.Integer(), nullable=False, server_default="0"),
        # What the pod looked like at the last watched checkpoint: CPU time of its processes
        # (clock ticks) and its volume's generation; unchanged both means nothing to record.
        sa.Column("seen_cpu", sa.Integer(), nullable=True),
        sa.Column("seen_generation", sa.Integer(), nullable=True),
    )
    # Plain ADD COLUMN: a batch copy of pods would drop its checkpoints through the cascade.
    op.add_column("pods", sa.Column("suspended_by", sa.String(12), nullable=True))


def downgrade() -> None:
    op.drop_table("watches")
    with op.batch_alter_table("pods") as batch:
        batch.drop_column("suspended_by")
