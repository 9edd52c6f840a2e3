"""Break-glass approvals: the approval kind, the declarer's reason, and what it may lift.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("approvals") as batch:
        batch.add_column(sa.Column("kind", sa.String(20), nullable=False,
                                   server_default="standard"))
        batch.add_column(sa.Column("reason", sa.Text))
        batch.add_column(sa.Column("lifts", sa.Text))
        batch.create_index("ix_approvals_kind_created", ["kind", "created_us"])


def downgrade() -> None:
    with op.batch_alter_table("approvals") as batch:
        batch.drop_index("ix_approvals_kind_created")
        batch.drop_column("lifts")
        batch.drop_column("reason")
        batch.drop_column("kind")
