"""The tables, as SQLAlchemy Core metadata. Migrations in ``migrations/versions`` create them."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

tenants = Table(
    "tenants",
    metadata,
    Column("id", String(100), primary_key=True),
    Column("created_at", Float, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("tenant_id", String(100), ForeignKey("tenants.id"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),
    Column("scopes", Text, nullable=False),
    Column("plan", String(20), nullable=False),
    Column("monthly_quota", Integer),
    Column("daily_quota", Integer),
    Column("per_minute", Integer),
    Column("principal", String(200)),
    Column("roles", Text, nullable=False, server_default=""),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float),
    Column("totp_secret", String(64)),
    Column("mfa_failures", Integer, nullable=False, server_default="0"),
    Column("mfa_locked_until_us", BigInteger),
    Column("totp_last_step", BigInteger),
)

key_usage = Table(
    "key_usage",
    metadata,
    Column("key_id", String(40), ForeignKey("api_keys.id"), primary_key=True),
    Column("month_key", String(7), nullable=False),
    Column("month_count", Integer, nullable=False),
    Column("day_key", String(10), nullable=False),
    Column("day_count", Integer, nullable=False),
    Column("minute_key", String(16), nullable=False),
    Column("minute_count", Integer, nullable=False),
)

run_state = Table(
    "run_state",
    metadata,
    Column("tenant_id", String(100), primary_key=True),
    Column("run_id", String(200), primary_key=True),
    Column("iterations", Integer, nullable=False),
    Column("first_seen_us", BigInteger, nullable=False),
    Column("recent_tools", Text, nullable=False),
    Column("cost_usd", Float, nullable=False),
    Column("updated_us", BigInteger, nullable=False),
)

decisions = Table(
    "decisions",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("tenant_id", String(100), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("request_id", String(100), nullable=False),
    Column("key_id", String(40)),
    Column("kind", String(20), nullable=False),
    Column("http_status", Integer, nullable=False),
    Column("verdict", String(10), nullable=False),
    Column("decision", String(10), nullable=False),
    Column("policy_version", String(200), nullable=False),
    Column("policy_sha256", String(64), nullable=False),
    Column("input_sha256", String(64), nullable=False),
    Column("action_digest", String(64), nullable=False),
    Column("environment", String(200)),
    Column("tools", Text, nullable=False),
    Column("buckets", Text, nullable=False),
    Column("request", Text, nullable=False),
    Column("redacted_paths", Text, nullable=False),
    Column("response", Text, nullable=False),
    Column("frozen_time", String(40)),
    Column("timings", Text, nullable=False),
    Column("created_us", BigInteger, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("row_hash", String(64), nullable=False),
    UniqueConstraint("tenant_id", "seq", name="uq_decisions_tenant_seq"),
    UniqueConstraint("tenant_id", "request_id", name="uq_decisions_tenant_request"),
    Index("ix_decisions_tenant_created", "tenant_id", "created_us"),
)

chain_heads = Table(
    "chain_heads",
    metadata,
    Column("tenant_id", String(100), primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("row_hash", String(64), nullable=False),
)

approvals = Table(
    "approvals",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("tenant_id", String(100), nullable=False),
    Column("status", String(20), nullable=False),
    Column("action_digest", String(64), nullable=False),
    Column("action", Text, nullable=False),
    Column("buckets", Text, nullable=False),
    Column("environment", String(200)),
    Column("request_id", String(100), nullable=False),
    Column("requested_by_key", String(40), nullable=False),
    Column("requested_by_principal", String(200)),
    Column("actor_id", String(2000)),
    Column("policy_version", String(200), nullable=False),
    Column("required_approvals", Integer, nullable=False),
    Column("approvals_count", Integer, nullable=False),
    Column("eligible_roles", Text, nullable=False),
    Column("requires_mfa", Integer, nullable=False),
    Column("execute_within_s", Float, nullable=False),
    Column("created_us", BigInteger, nullable=False),
    Column("expires_us", BigInteger, nullable=False),
    Column("decided_us", BigInteger),
    Column("execute_by_us", BigInteger),
    Column("used_us", BigInteger),
    Column("used_by_request", String(100)),
    Column("kind", String(20), nullable=False, server_default="standard"),
    Column("reason", Text),
    Column("lifts", Text),
    Column("binding_digest", String(64)),
    Column("bound_fields", Text),
    Column("bound_to", String(20), nullable=False, server_default="key"),
    Column("warned_us", BigInteger),
    Index("ix_approvals_tenant_digest", "tenant_id", "action_digest", "status"),
    Index("ix_approvals_tenant_status", "tenant_id", "status"),
    Index("ix_approvals_kind_created", "kind", "created_us"),
)

approval_votes = Table(
    "approval_votes",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("approval_id", String(40), nullable=False),
    Column("tenant_id", String(100), nullable=False),
    Column("key_id", String(40), nullable=False),
    Column("principal", String(200), nullable=False),
    Column("decision", String(10), nullable=False),
    Column("reason", Text, nullable=False),
    Column("mfa", Integer, nullable=False),
    Column("created_us", BigInteger, nullable=False),
    UniqueConstraint("approval_id", "principal", name="uq_votes_approval_principal"),
)

signing_keys = Table(
    "signing_keys",
    metadata,
    Column("kid", String(64), primary_key=True),
    Column("private_pem", Text, nullable=False),
    Column("public_jwk", Text, nullable=False),
    Column("created_us", BigInteger, nullable=False),
    Column("retired_us", BigInteger),
)

token_uses = Table(
    "token_uses",
    metadata,
    Column("tenant_id", String(100), primary_key=True),
    Column("jti", String(100), primary_key=True),
    Column("key_id", String(40), nullable=False),
    Column("consumed_us", BigInteger, nullable=False),
)

webhooks = Table(
    "webhooks",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("tenant_id", String(100), nullable=False),
    Column("url", Text, nullable=False),
    Column("secret", String(100), nullable=False),
    Column("events", Text, nullable=False),
    Column("created_us", BigInteger, nullable=False),
    Column("disabled_us", BigInteger),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("webhook_id", String(40), nullable=False),
    Column("tenant_id", String(100), nullable=False),
    Column("approval_id", String(40)),
    Column("event", String(40), nullable=False),
    Column("event_id", String(100), nullable=False),
    Column("payload", Text, nullable=False),
    Column("status", String(20), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_us", BigInteger, nullable=False),
    Column("last_status", Integer),
    Column("last_error", Text),
    Column("created_us", BigInteger, nullable=False),
    Column("delivered_us", BigInteger),
    Index("ix_deliveries_due", "status", "next_attempt_us"),
    Index("ix_deliveries_approval", "approval_id"),
)

console_sessions = Table(
    "console_sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),
    Column("tenant_id", String(100), nullable=False),
    Column("key_id", String(40), ForeignKey("api_keys.id"), nullable=False),
    Column("csrf_token", String(64), nullable=False),
    Column("created_us", BigInteger, nullable=False),
    Column("expires_us", BigInteger, nullable=False),
    Index("ix_console_sessions_expires", "expires_us"),
)

chain_checkpoints = Table(
    "chain_checkpoints",
    metadata,
    Column("tenant_id", String(100), primary_key=True),
    Column("seq", BigInteger, primary_key=True),
    Column("row_hash", String(64), nullable=False),
    Column("kid", String(64), nullable=False),
    Column("reason", String(20), nullable=False),
    Column("created_us", BigInteger, nullable=False),
    Column("jws", Text, nullable=False),
)

policy_versions = Table(
    "policy_versions",
    metadata,
    Column("generation", BigInteger, primary_key=True, autoincrement=False),
    Column("policy_version", String(300), nullable=False, unique=True),
    Column("name", String(200), nullable=False),
    Column("version", String(100), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("pack_text", Text, nullable=False),
    Column("pushed_by", String(200), nullable=False),
    Column("pushed_us", BigInteger, nullable=False),
)

policy_active = Table(
    "policy_active",
    metadata,
    Column("scope", String(100), primary_key=True),
    Column("generation", BigInteger, nullable=False),
    Column("policy_version", String(300), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("epoch", BigInteger, nullable=False),
    Column("previous_generation", BigInteger),
    Column("activated_by", String(200), nullable=False),
    Column("activated_us", BigInteger, nullable=False),
)

policy_replicas = Table(
    "policy_replicas",
    metadata,
    Column("replica_id", String(100), primary_key=True),
    Column("hostname", String(200), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("generation", BigInteger),
    Column("policy_version", String(300)),
    Column("sha256", String(64)),
    Column("state", String(20), nullable=False),
    Column("error", Text),
    Column("started_us", BigInteger, nullable=False),
    Column("seen_us", BigInteger, nullable=False),
    Index("ix_policy_replicas_seen", "seen_us"),
)

export_cursors = Table(
    "export_cursors",
    metadata,
    Column("sink", String(100), primary_key=True),
    Column("tenant_id", String(100), primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("lease_owner", String(100)),
    Column("lease_until_us", BigInteger, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_us", BigInteger, nullable=False),
    Column("last_error", Text),
    Column("delivered_us", BigInteger),
    Column("updated_us", BigInteger, nullable=False),
)
