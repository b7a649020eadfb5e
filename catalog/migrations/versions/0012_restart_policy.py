"""restart policies (`zap run --restart`) and how a pod's init ended: pods.restart,
restart_max, restart_count, exit_code, exited_at

Revision ID: 0012
Revises: 0011
"""
import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("pods", sa.Column("restart", sa.String(16), nullable=False, server_default="no"))
    op.add_column("pods", sa.Column("restart_max", sa.Integer(), nullable=True))
    op.add_column("pods", sa.Column("restart_count", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("pods", sa.Column("exit_code", sa.Integer(), nullable=True))
    op.add_column("pods", sa.Column("exited_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("pods") as batch:
        for col in ("exited_at", "exit_code", "restart_count", "restart_max", "restart"):
            batch.drop_column(col)
