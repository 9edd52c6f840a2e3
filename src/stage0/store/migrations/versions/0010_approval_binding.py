"""Approvals bound to more than the action digest, and warned before they expire.

``binding_digest``: the SHA-256 of the action digest and the request fields the pack binds an
approval to (goal, record count, amounts, currency, tenants); ``bound_fields``: those values as
requested (JSON), to say what changed; ``bound_to``: who may use it (``key``, ``principal``,
``tenant``); ``warned_us``: when the approvers were told it is about to expire
(``approval.expiring``). Rows from before have no binding digest: they bind nothing, so a
check using one is told to request a new approval (``APPROVAL_SCOPE_MISMATCH``).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("approvals") as batch:
        batch.add_column(sa.Column("binding_digest", sa.String(64)))
        batch.add_column(sa.Column("bound_fields", sa.Text))
        batch.add_column(sa.Column("bound_to", sa.String(20), nullable=False,
                                   server_default="key"))
        batch.add_column(sa.Column("warned_us", sa.BigInteger))


def downgrade() -> None:
    with op.batch_alter_table("approvals") as batch:
        batch.drop_column("warned_us")
        batch.drop_column("bound_to")
        batch.drop_column("bound_fields")
        batch.drop_column("binding_digest")
