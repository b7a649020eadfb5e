"""volume pods see the host's tree read-only: pods.host_writable

True for `zap run --host-writable`, and for every pod made before this revision (its checkpoints
may hold files it opened for writing outside its volume, which a read-only tree could not
reopen at restore).

Revision ID: 0013
Revises: 0012
"""
import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ALTER TABLE ADD COLUMN (see 0005: a batch copy would drop the pods' checkpoints).
    op.add_column("pods", sa.Column("host_writable", sa.Boolean(), nullable=False, server_default=sa.true()))


def downgrade() -> None:
    with op.batch_alter_table("pods") as batch:
        batch.drop_column("host_writable")
