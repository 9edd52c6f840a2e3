"""Initial schema: tenants, API keys, usage counters, run state, the decision log and its chain.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.String(100), primary_key=True),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("tenant_id", sa.String(100), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("scopes", sa.Text, nullable=False),
        sa.Column("plan", sa.String(20), nullable=False),
        sa.Column("monthly_quota", sa.Integer),
        sa.Column("daily_quota", sa.Integer),
        sa.Column("per_minute", sa.Integer),
        sa.Column("principal", sa.String(200)),
        sa.Column("roles", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("revoked_at", sa.Float),
    )
    op.create_table(
        "key_usage",
        sa.Column("key_id", sa.String(40), sa.ForeignKey("api_keys.id"), primary_key=True),
        sa.Column("month_key", sa.String(7), nullable=False),
        sa.Column("month_count", sa.Integer, nullable=False),
        sa.Column("day_key", sa.String(10), nullable=False),
        sa.Column("day_count", sa.Integer, nullable=False),
        sa.Column("minute_key", sa.String(16), nullable=False),
        sa.Column("minute_count", sa.Integer, nullable=False),
    )
    op.create_table(
        "run_state",
        sa.Column("tenant_id", sa.String(100), primary_key=True),
        sa.Column("run_id", sa.String(200), primary_key=True),
        sa.Column("iterations", sa.Integer, nullable=False),
        sa.Column("first_seen_us", sa.BigInteger, nullable=False),
        sa.Column("recent_tools", sa.Text, nullable=False),
        sa.Column("cost_usd", sa.Float, nullable=False),
        sa.Column("updated_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "decisions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
                  autoincrement=True),
        sa.Column("tenant_id", sa.String(100), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("request_id", sa.String(100), nullable=False),
        sa.Column("key_id", sa.String(40)),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("http_status", sa.Integer, nullable=False),
        sa.Column("verdict", sa.String(10), nullable=False),
        sa.Column("decision", sa.String(10), nullable=False),
        sa.Column("policy_version", sa.String(200), nullable=False),
        sa.Column("policy_sha256", sa.String(64), nullable=False),
        sa.Column("input_sha256", sa.String(64), nullable=False),
        sa.Column("action_digest", sa.String(64), nullable=False),
        sa.Column("environment", sa.String(200)),
        sa.Column("tools", sa.Text, nullable=False),
        sa.Column("buckets", sa.Text, nullable=False),
        sa.Column("request", sa.Text, nullable=False),
        sa.Column("redacted_paths", sa.Text, nullable=False),
        sa.Column("response", sa.Text, nullable=False),
        sa.Column("frozen_time", sa.String(40)),
        sa.Column("timings", sa.Text, nullable=False),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("row_hash", sa.String(64), nullable=False),
        sa.UniqueConstraint("tenant_id", "seq", name="uq_decisions_tenant_seq"),
        sa.UniqueConstraint("tenant_id", "request_id", name="uq_decisions_tenant_request"),
    )
    op.create_index("ix_decisions_tenant_created", "decisions", ["tenant_id", "created_us"])
    op.create_table(
        "chain_heads",
        sa.Column("tenant_id", sa.String(100), primary_key=True),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("row_hash", sa.String(64), nullable=False),
    )


def downgrade() -> None:
    for table in ("chain_heads", "decisions", "run_state", "key_usage", "api_keys", "tenants"):
        op.drop_table(table)
