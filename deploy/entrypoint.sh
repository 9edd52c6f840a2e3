#!/bin/sh
# Stage0's container entrypoint (docs/deploy.md).
#
#   entrypoint.sh [serve] [SERVE-OPTION...]  wait for PostgreSQL (when the store is one), run
#                                            `stage0 migrate`, then exec `stage0 serve`
#   entrypoint.sh SUBCOMMAND [ARG...]        exec `stage0 SUBCOMMAND ARG...` and nothing else
#                                            (keys, audit, check, migrate, --help, --version...)
#
# Reads: STAGE0_DATABASE_URL, STAGE0_HOST (0.0.0.0), STAGE0_PORT (8000), STAGE0_WORKERS (1),
# STAGE0_DB_WAIT_S (60), STAGE0_BIN (stage0), STAGE0_PYTHON (the python beside STAGE0_BIN);
# `stage0 serve` itself also reads STAGE0_POLICY and the rest of docs/settings.md.
set -eu

STAGE0_BIN="${STAGE0_BIN:-stage0}"

say() {
    printf 'stage0-entrypoint: %s\n' "$*" >&2
}

# The first argument chooses: nothing, `serve` or a serve option (`--workers 4`) serves; a
# subcommand, -h, --help or --version runs that instead.
if [ "$#" -gt 0 ]; then
    case "$1" in
        serve) shift ;;
        -h | --help | --version) exec "$STAGE0_BIN" "$@" ;;
        -*) ;;
        *) exec "$STAGE0_BIN" "$@" ;;
    esac
fi

if ! command -v "$STAGE0_BIN" >/dev/null 2>&1; then
    say "cannot run STAGE0_BIN=$STAGE0_BIN: not found"
    exit 127
fi

database_url="${STAGE0_DATABASE_URL:-}"
case "$database_url" in
    postgres://* | postgresql://* | postgresql+*://*)
        wait_s="${STAGE0_DB_WAIT_S:-60}"
        case "$wait_s" in
            '' | *[!0-9]*)
                say "STAGE0_DB_WAIT_S must be a whole number of seconds, not '$wait_s'"
                exit 2
                ;;
        esac
        python="${STAGE0_PYTHON:-}"
        if [ -z "$python" ]; then
            bin_path="$(command -v "$STAGE0_BIN")"
            python="$(dirname "$bin_path")/python"
            [ -x "$python" ] || python=python3
        fi
        # psycopg is one of Stage0's dependencies, so the virtualenv's python can connect.
        "$python" - "$database_url" "$wait_s" <<'EOF'
import re
import sys
import time

import psycopg

url, wait_s = sys.argv[1], int(sys.argv[2])
url = re.sub(r"^postgresql\+[a-z0-9_]+://", "postgresql://", url)  # a SQLAlchemy driver name
shown = re.sub(r"://([^:/@]+):([^@]+)@", r"://\1:***@", url)
deadline = time.monotonic() + wait_s
reported = 0.0
while True:
    remaining = deadline - time.monotonic()
    try:
        psycopg.connect(url, connect_timeout=max(2, min(10, int(remaining) + 1))).close()
        break
    except psycopg.Error as exc:
        error = (str(exc).strip() or type(exc).__name__).splitlines()[0]
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        sys.exit(f"stage0-entrypoint: PostgreSQL at {shown} did not accept connections within "
                 f"{wait_s} s (STAGE0_DB_WAIT_S): {error}")
    if time.monotonic() - reported >= 10:
        print(f"stage0-entrypoint: waiting up to {int(remaining)} s more for PostgreSQL at "
              f"{shown}: {error}", file=sys.stderr, flush=True)
        reported = time.monotonic()
    time.sleep(min(1.0, remaining))
EOF
        ;;
esac

"$STAGE0_BIN" migrate
exec "$STAGE0_BIN" serve --host "${STAGE0_HOST:-0.0.0.0}" --port "${STAGE0_PORT:-8000}" \
    --workers "${STAGE0_WORKERS:-1}" "$@"
