"""Decision-log export cursors; on PostgreSQL, the decision log partitioned by month.

``export_cursors``: one row per ``(sink, tenant)``: the ``seq`` of the tenant's chain the sink
has acknowledged (``stage0.store.export``), the lease of the server process delivering the next
batch, and the retry schedule of a failed one.

PostgreSQL: ``decisions`` becomes a table partitioned by range on ``created_us``, one partition
per calendar month (UTC) named ``decisions_pYYYYMM``, plus ``decisions_default`` for rows outside
every monthly partition; the months of the rows already logged and the next three are created
here, later months by the running server (``stage0.store.retention``). PostgreSQL requires a
partitioned table's unique constraints to include the partition key, so the primary key is
``(id, created_us)`` and the uniqueness of ``(tenant_id, seq)`` and ``(tenant_id, request_id)``
is per partition (``created_us`` added); across partitions it is the decision writer's, which
appends under the tenant's lock after reading the chain head and the earlier answers of the
batch's request ids (docs/operations.md, "Retention and partitions"). The rows are copied into
the new table in one transaction; the id sequence is kept. SQLite is not partitioned.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

AHEAD_MONTHS = 3


def _months(first_us: int | None, now_us: int) -> list[tuple[int, int]]:
    from stage0.store.retention import month_bounds, months_between  # noqa: PLC0415

    start = now_us if first_us is None else min(first_us, now_us)
    return [month_bounds(y, m) for y, m in months_between(start, now_us, AHEAD_MONTHS)]


def _partition_postgresql() -> None:
    import time  # noqa: PLC0415

    from stage0.store.retention import partition_name  # noqa: PLC0415

    bind = op.get_bind()
    first, last = bind.execute(sa.text(
        "SELECT min(created_us), max(created_us) FROM decisions")).one()
    now_us = max(int(time.time() * 1e6), int(last or 0))
    op.execute("ALTER TABLE decisions RENAME TO decisions_unpartitioned")
    for name in ("uq_decisions_tenant_seq", "uq_decisions_tenant_request"):
        op.execute(f"ALTER TABLE decisions_unpartitioned RENAME CONSTRAINT {name} TO {name}_old")
    op.execute("ALTER INDEX ix_decisions_tenant_created RENAME TO ix_decisions_tenant_created_old")
    op.execute("ALTER INDEX decisions_pkey RENAME TO decisions_unpartitioned_pkey")
    op.execute("ALTER SEQUENCE decisions_id_seq OWNED BY NONE")
    # the columns (types, defaults: the id sequence, compression: LZ4 since 0008) as they are
    op.execute("CREATE TABLE decisions (LIKE decisions_unpartitioned INCLUDING DEFAULTS "
               "INCLUDING COMPRESSION) PARTITION BY RANGE (created_us)")
    op.execute("ALTER TABLE decisions ADD CONSTRAINT decisions_pkey PRIMARY KEY (id, created_us)")
    op.execute("ALTER TABLE decisions ADD CONSTRAINT uq_decisions_tenant_seq "
               "UNIQUE (tenant_id, seq, created_us)")
    op.execute("ALTER TABLE decisions ADD CONSTRAINT uq_decisions_tenant_request "
               "UNIQUE (tenant_id, request_id, created_us)")
    op.execute("CREATE INDEX ix_decisions_tenant_created ON decisions (tenant_id, created_us)")
    op.execute("CREATE TABLE decisions_default PARTITION OF decisions DEFAULT")
    for low, high in _months(None if first is None else int(first), now_us):
        op.execute(f"CREATE TABLE {partition_name(low)} PARTITION OF decisions "
                   f"FOR VALUES FROM ({low}) TO ({high})")
    op.execute("INSERT INTO decisions SELECT * FROM decisions_unpartitioned")
    op.execute("DROP TABLE decisions_unpartitioned")
    op.execute("ALTER SEQUENCE decisions_id_seq OWNED BY decisions.id")


def _unpartition_postgresql() -> None:
    op.execute("ALTER TABLE decisions RENAME TO decisions_partitioned")
    for name in ("uq_decisions_tenant_seq", "uq_decisions_tenant_request", "decisions_pkey"):
        op.execute(f"ALTER TABLE decisions_partitioned RENAME CONSTRAINT {name} TO {name}_part")
    op.execute("ALTER INDEX ix_decisions_tenant_created RENAME TO ix_decisions_tenant_created_p")
    op.execute("ALTER SEQUENCE decisions_id_seq OWNED BY NONE")
    op.execute("CREATE TABLE decisions (LIKE decisions_partitioned INCLUDING DEFAULTS "
               "INCLUDING COMPRESSION)")
    op.execute("ALTER TABLE decisions ADD CONSTRAINT decisions_pkey PRIMARY KEY (id)")
    op.execute("ALTER TABLE decisions ADD CONSTRAINT uq_decisions_tenant_seq "
               "UNIQUE (tenant_id, seq)")
    op.execute("ALTER TABLE decisions ADD CONSTRAINT uq_decisions_tenant_request "
               "UNIQUE (tenant_id, request_id)")
    op.execute("CREATE INDEX ix_decisions_tenant_created ON decisions (tenant_id, created_us)")
    op.execute("INSERT INTO decisions SELECT * FROM decisions_partitioned ORDER BY id")
    op.execute("DROP TABLE decisions_partitioned CASCADE")
    op.execute("ALTER SEQUENCE decisions_id_seq OWNED BY decisions.id")


def upgrade() -> None:
    op.create_table(
        "export_cursors",
        sa.Column("sink", sa.String(100), primary_key=True),
        sa.Column("tenant_id", sa.String(100), primary_key=True),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("lease_owner", sa.String(100)),
        sa.Column("lease_until_us", sa.BigInteger, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_us", sa.BigInteger, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("delivered_us", sa.BigInteger),
        sa.Column("updated_us", sa.BigInteger, nullable=False),
    )
    if op.get_bind().dialect.name == "postgresql":
        _partition_postgresql()


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _unpartition_postgresql()
    op.drop_table("export_cursors")
