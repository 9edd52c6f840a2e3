"""Approval counts kept current on every vote; the break-glass `lifts` column everywhere.

``approvals_count`` used to be written only when a request changed status; the pipeline now
keeps it current on each vote and relies on it to skip reading the votes of a pending request
nobody approved yet, so pending requests are recounted here. A database that ran an early
0006 (before `lifts` was added to it) gets the column.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("approvals")}
    if "lifts" not in columns:
        with op.batch_alter_table("approvals") as batch:
            batch.add_column(sa.Column("lifts", sa.Text))
    op.execute(
        "UPDATE approvals SET approvals_count = (SELECT count(*) FROM approval_votes v "
        "WHERE v.approval_id = approvals.id AND v.decision = 'approve') "
        "WHERE status = 'pending'"
    )


def downgrade() -> None:
    """Nothing to undo: the counts are correct under 0006 too, and `lifts` belongs to 0006."""
