"""Signed chain checkpoints: a tenant's chain head at one ``seq``, signed by the server's key.

Each row is a JWS (the server's Ed25519 signing key, ``signing_keys``) over the tenant, the
``seq`` and its ``row_hash``; ``stage0 audit verify`` checks the chain against them (and against
copies kept outside the database: the witness file), so that deleting the newest rows and
rewinding the head, or rehashing the chain from a row onwards, is detected back to the last
checkpoint. One checkpoint per ``(tenant_id, seq)``.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "chain_checkpoints",
        sa.Column("tenant_id", sa.String(100), primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True),
        sa.Column("row_hash", sa.String(64), nullable=False),
        sa.Column("kid", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(20), nullable=False),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        sa.Column("jws", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("chain_checkpoints")
