"""resource limits of pods (`zap run --memory --cpus`): pods.memory_limit (bytes), pods.cpus

Revision ID: 0011
Revises: 0010
"""
import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("pods", sa.Column("memory_limit", sa.Integer(), nullable=True))
    op.add_column("pods", sa.Column("cpus", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("pods") as batch:
        batch.drop_column("cpus")
        batch.drop_column("memory_limit")
