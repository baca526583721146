#!/usr/bin/env bash
# The one test command (README, CI): installs and starts what the tests need, runs the
# whole test suite, stops what it started.
#
#   scripts/test.sh [extra cargo test args]
#
# Needs: the Rust toolchain (rustup), python3 (for moto's S3 server in a venv), and
# either tmux, curl and fuse3 (fusermount3) or root + apt-get to install them. The
# tmpfs and FUSE tests (tests/full_disk.rs, tests/power_loss.rs) need root and
# /dev/fuse to mount; they fail with CI=true and are skipped loudly otherwise. Set
# WALSPOOL_S3_ENDPOINT to use an S3 server you already run instead of moto.
# PostgreSQL (Debian's `postgresql`, installed as root if missing) is started on
# 127.0.0.1:$WALSPOOL_PG_PORT (default 55432) in a throwaway cluster by
# scripts/postgres.sh and stopped at exit; the PostgreSQL sink's tests find it through
# WALSPOOL_PG_URL (without it they skip loudly, and fail with CI=true).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v tmux >/dev/null 2>&1 || need_apt+=(tmux)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
# tests/power_loss.rs mounts a FUSE file system: as root it mounts directly through
# /dev/fuse, fusermount3 is the fallback (and what non-root users need).
command -v fusermount3 >/dev/null 2>&1 || need_apt+=(fuse3)
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "test.sh: installing ${need_apt[*]}" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
    else
        echo "test.sh: please install: ${need_apt[*]}" >&2
        exit 1
    fi
fi

started_moto=""
if [ -z "${WALSPOOL_S3_ENDPOINT:-}" ]; then
    export MOTO_PORT="${MOTO_PORT:-5055}"
    # shellcheck source=moto.sh
    . scripts/moto.sh start "$MOTO_PORT"
    started_moto=1
fi
started_pg=""
cleanup() {
    if [ -n "$started_moto" ]; then
        scripts/moto.sh stop "$MOTO_PORT" >/dev/null 2>&1 || true
    fi
    if [ -n "$started_pg" ]; then
        scripts/postgres.sh stop "$WALSPOOL_PG_PORT" >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

export WALSPOOL_PG_PORT="${WALSPOOL_PG_PORT:-55432}"
if ! scripts/postgres.sh status "$WALSPOOL_PG_PORT"; then
    started_pg=1
fi
# shellcheck source=postgres.sh
. scripts/postgres.sh start "$WALSPOOL_PG_PORT"

echo "test.sh: S3 endpoint $WALSPOOL_S3_ENDPOINT, PostgreSQL $WALSPOOL_PG_URL" >&2
cargo test --workspace --all-features --no-fail-fast "$@"
