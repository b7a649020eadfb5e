"""frames: one row per zstd frame of the image store, so that a restore finds where a
checkpoint's pages are from a few thousand frame rows instead of one row per page; the working
set a lazy restore saw faulted first

Revision ID: 0015
Revises: 0014
"""
import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

WIDE = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "frames",
        sa.Column("pack_id", WIDE, sa.ForeignKey("packs.id"), nullable=False),
        sa.Column("offset", WIDE, nullable=False),
        sa.Column("length", sa.Integer(), nullable=False),
        # A uniform frame holds page-sized chunks only, chunk id `base + i` at i * 4096 in the
        # decompressed frame (the ids an ingest gives its new chunks, in order); any other frame
        # lists its chunks in the chunks table alone, base being its lowest chunk id.
        sa.Column("base", WIDE, nullable=False),
        sa.Column("last", WIDE, nullable=False),
        sa.Column("uniform", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("pack_id", "offset"),
    )
    op.create_index("ix_frames_base", "frames", ["base"])
    # The frames of the chunks stored so far, by the rule catalog/chunks.py applies to new packs
    # (the SQL is repeated here: a migration must not change when that module does).
    strict = (" AND COUNT(*) OVER w = MAX(c.id) OVER w - MIN(c.id) OVER w + 1 AND MIN(c.start) OVER w = 0"
              if op.get_bind().dialect.name == "postgresql" else "")  # fmt: skip
    op.execute(
        'INSERT INTO frames (pack_id, "offset", length, base, last, uniform) '
        'SELECT pack_id, "offset", MAX(length), CASE WHEN u THEN MIN(id - start / 4096) ELSE MIN(id) END, MAX(id), u '
        'FROM (SELECT c.pack_id, c."offset", c.length, c.id, c.start, '
        "(MIN(c.raw_length) OVER w = 4096 AND MAX(c.raw_length) OVER w = 4096 AND "
        "MIN(c.id - c.start / 4096) OVER w = MAX(c.id - c.start / 4096) OVER w AND "
        f"MIN(c.start % 4096) OVER w = 0 AND MAX(c.start % 4096) OVER w = 0{strict}) AS u "
        'FROM chunks c WINDOW w AS (PARTITION BY c.pack_id, c."offset")) f '
        'GROUP BY pack_id, "offset", u'
    )
    # The pages a lazy restore of the checkpoint saw faulted, in the order they were: a later
    # lazy restore brings these in with the restore itself (zstd-compressed (pid, address) pairs).
    op.add_column("checkpoints", sa.Column("working_set", sa.LargeBinary(), nullable=True))
    # A pod running while its memory still comes in (or the state it replaced is still being
    # stored): `zap ps` says "restoring", and commands on it wait.
    op.add_column("pods", sa.Column("restoring", sa.Boolean(), nullable=False, server_default=sa.false()))
    # What zap did to the pod on its own that its user must hear of (a restore undone after it
    # was reported), shown by `zap show` and `zap ps` until the next restore or start.
    op.add_column("pods", sa.Column("note", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("pods", "note")
    op.drop_column("pods", "restoring")
    op.drop_column("checkpoints", "working_set")
    op.drop_index("ix_frames_base", table_name="frames")
    op.drop_table("frames")
