"""Single-use approvals, approver MFA lockout and replay protection, per-tenant token records.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("mfa_failures", sa.Integer, nullable=False,
                                   server_default="0"))
        batch.add_column(sa.Column("mfa_locked_until_us", sa.BigInteger))
        batch.add_column(sa.Column("totp_last_step", sa.BigInteger))
    with op.batch_alter_table("approvals") as batch:
        batch.add_column(sa.Column("used_us", sa.BigInteger))
        batch.add_column(sa.Column("used_by_request", sa.String(100)))
    op.drop_table("token_uses")
    op.create_table(
        "token_uses",
        sa.Column("tenant_id", sa.String(100), primary_key=True),
        sa.Column("jti", sa.String(100), primary_key=True),
        sa.Column("key_id", sa.String(40), nullable=False),
        sa.Column("consumed_us", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("token_uses")
    op.create_table(
        "token_uses",
        sa.Column("jti", sa.String(100), primary_key=True),
        sa.Column("tenant_id", sa.String(100), nullable=False),
        sa.Column("key_id", sa.String(40), nullable=False),
        sa.Column("consumed_us", sa.BigInteger, nullable=False),
    )
    with op.batch_alter_table("approvals") as batch:
        batch.drop_column("used_by_request")
        batch.drop_column("used_us")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("totp_last_step")
        batch.drop_column("mfa_locked_until_us")
        batch.drop_column("mfa_failures")
