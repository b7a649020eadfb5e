"""pods with a private /tmp

pods.private_tmp: the pod (one without --rootfs) sees its own /tmp, `.zap/tmp` inside its
volume, instead of the host's. Pods made before this revision keep the host's /tmp, so their
checkpoints (whose processes may hold files there) still restore.

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ALTER TABLE ADD COLUMN: a batch copy of `pods` would drop the table, and with
    # foreign keys on, SQLite would delete the pods' checkpoints with it.
    op.add_column("pods", sa.Column("private_tmp", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("pods") as batch:
        batch.drop_column("private_tmp")
