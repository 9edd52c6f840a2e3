"""Policy distribution through the store: pushed pack versions, the active one, replicas.

``policy_versions``: every pack pushed with ``stage0 policy push`` — its text, ``name@version``,
the SHA-256 of its canonical content, who pushed it and when, and ``generation``, a number that
increases with every push. ``policy_active``: one row per scope (``global``: the pack is global
today) naming the active generation (and, copied, its ``name@version`` and SHA-256, so that the
decision writer's check is one small read); ``epoch`` counts activations (push, activate, rollback).
``policy_replicas``: each server process's heartbeat — the generation and pack it serves, its
state, and when it was last seen — from which ``/readyz``, the metrics and the console show drift.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "policy_versions",
        sa.Column("generation", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("policy_version", sa.String(300), nullable=False, unique=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("version", sa.String(100), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("pack_text", sa.Text, nullable=False),
        sa.Column("pushed_by", sa.String(200), nullable=False),
        sa.Column("pushed_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "policy_active",
        sa.Column("scope", sa.String(100), primary_key=True),
        sa.Column("generation", sa.BigInteger, nullable=False),
        sa.Column("policy_version", sa.String(300), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("previous_generation", sa.BigInteger),
        sa.Column("activated_by", sa.String(200), nullable=False),
        sa.Column("activated_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "policy_replicas",
        sa.Column("replica_id", sa.String(100), primary_key=True),
        sa.Column("hostname", sa.String(200), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("generation", sa.BigInteger),
        sa.Column("policy_version", sa.String(300)),
        sa.Column("sha256", sa.String(64)),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("started_us", sa.BigInteger, nullable=False),
        sa.Column("seen_us", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_policy_replicas_seen", "policy_replicas", ["seen_us"])


def downgrade() -> None:
    op.drop_index("ix_policy_replicas_seen", "policy_replicas")
    op.drop_table("policy_replicas")
    op.drop_table("policy_active")
    op.drop_table("policy_versions")
