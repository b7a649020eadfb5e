"""pods with their own network and declared host volumes; checkpoints that stopped their pod

pods.net: "pod" (own network namespace with an address on the bridge), "none" (loopback only)
or "host" (the host's namespace; every pod made before this revision). pods.address, pods.ports
(published ports), pods.volumes (declared host binds), pods.net_locked_by (the --stop
checkpoint whose CRIU network lock still holds the pod's external connections),
checkpoints.stopped and checkpoints.criu_run_id (the lock table is `inet CRIU-<run id>`).

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("pods") as batch:
        batch.add_column(sa.Column("net", sa.String(8), nullable=False, server_default="host"))
        batch.add_column(sa.Column("address", sa.String(64), nullable=True))
        batch.add_column(sa.Column("ports", sa.JSON(), nullable=False, server_default="[]"))
        batch.add_column(sa.Column("volumes", sa.JSON(), nullable=False, server_default="[]"))
        batch.add_column(sa.Column("net_locked_by", sa.String(12), nullable=True))
    with op.batch_alter_table("checkpoints") as batch:
        batch.add_column(sa.Column("stopped", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("criu_run_id", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("checkpoints") as batch:
        batch.drop_column("criu_run_id")
        batch.drop_column("stopped")
    with op.batch_alter_table("pods") as batch:
        for col in ("net_locked_by", "volumes", "ports", "address", "net"):
            batch.drop_column(col)
