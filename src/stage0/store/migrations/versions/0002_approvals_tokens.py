"""Approvals, approver TOTP, execution-token signing keys and single-use token records.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("totp_secret", sa.String(64)))
    op.create_table(
        "approvals",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("tenant_id", sa.String(100), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("action_digest", sa.String(64), nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("buckets", sa.Text, nullable=False),
        sa.Column("environment", sa.String(200)),
        sa.Column("request_id", sa.String(100), nullable=False),
        sa.Column("requested_by_key", sa.String(40), nullable=False),
        sa.Column("requested_by_principal", sa.String(200)),
        sa.Column("actor_id", sa.String(2000)),
        sa.Column("policy_version", sa.String(200), nullable=False),
        sa.Column("required_approvals", sa.Integer, nullable=False),
        sa.Column("approvals_count", sa.Integer, nullable=False),
        sa.Column("eligible_roles", sa.Text, nullable=False),
        sa.Column("requires_mfa", sa.Integer, nullable=False),
        sa.Column("execute_within_s", sa.Float, nullable=False),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        sa.Column("expires_us", sa.BigInteger, nullable=False),
        sa.Column("decided_us", sa.BigInteger),
        sa.Column("execute_by_us", sa.BigInteger),
    )
    op.create_index("ix_approvals_tenant_digest", "approvals",
                    ["tenant_id", "action_digest", "status"])
    op.create_index("ix_approvals_tenant_status", "approvals", ["tenant_id", "status"])
    op.create_table(
        "approval_votes",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
                  autoincrement=True),
        sa.Column("approval_id", sa.String(40), nullable=False),
        sa.Column("tenant_id", sa.String(100), nullable=False),
        sa.Column("key_id", sa.String(40), nullable=False),
        sa.Column("principal", sa.String(200), nullable=False),
        sa.Column("decision", sa.String(10), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("mfa", sa.Integer, nullable=False),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("approval_id", "principal", name="uq_votes_approval_principal"),
    )
    op.create_table(
        "signing_keys",
        sa.Column("kid", sa.String(64), primary_key=True),
        sa.Column("private_pem", sa.Text, nullable=False),
        sa.Column("public_jwk", sa.Text, nullable=False),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        sa.Column("retired_us", sa.BigInteger),
    )
    op.create_table(
        "token_uses",
        sa.Column("jti", sa.String(100), primary_key=True),
        sa.Column("tenant_id", sa.String(100), nullable=False),
        sa.Column("key_id", sa.String(40), nullable=False),
        sa.Column("consumed_us", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    for table in ("token_uses", "signing_keys", "approval_votes", "approvals"):
        op.drop_table(table)
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("totp_secret")
