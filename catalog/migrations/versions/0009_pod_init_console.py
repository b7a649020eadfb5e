"""a small init as the pod's pid 1: pods.init (pods made before run their command as pid 1);
the console as a pipe to a log outside the volume: pods.console_pipe

Revision ID: 0009
Revises: 0008
"""
import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("pods", sa.Column("init", sa.Boolean(), nullable=False, server_default="0"))
    op.add_column("pods", sa.Column("console_pipe", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("pods") as batch:
        batch.drop_column("console_pipe")
        batch.drop_column("init")
