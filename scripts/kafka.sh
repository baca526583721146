#!/usr/bin/env bash
# kafka.sh — a throwaway Kafka-protocol broker (tansu) on 127.0.0.1 for the Kafka sink's tests.
#
#   scripts/kafka.sh start [PORT]   install tansu if needed (see below), start
#                                   `tansu broker` listening on 127.0.0.1:PORT with its
#                                   SQLite store in a new temp dir, in the background (no-op
#                                   when something already answers there), print
#                                   WALSPOOL_KAFKA_BROKERS=... and WALSPOOL_KAFKA_SERVER=...
#   scripts/kafka.sh stop [PORT]    stop the broker this script started and delete its store
#   scripts/kafka.sh status [PORT]  exit 0 when something answers on PORT
#
# PORT defaults to $WALSPOOL_KAFKA_PORT or 59092. When sourced (`. scripts/kafka.sh start`),
# WALSPOOL_KAFKA_BROKERS (host:port) and WALSPOOL_KAFKA_SERVER (the tansu binary, which the
# outage test runs itself on another port) are exported into the calling shell.
# The broker's pid and store dir are remembered in ${TMPDIR:-/tmp}/walspool-kafka-PORT.{pid,dir}.
#
# After starting the broker, an index tansu 0.6 lacks is added to its store (see
# _kafka_index below).
#
# The broker: Apache Kafka itself is not in the package registries this project uses;
# tansu (crates.io, Apache-2.0) is a Kafka-protocol broker in Rust. Its default build has
# no storage engine that keeps anything (memory:// and s3:// need the `dynostore`
# feature, sqlite:// the `libsql` one), so it is installed with `--features libsql`, into
# its own root so that a `tansu` built otherwise on PATH is not picked up by mistake:
#   cargo install tansu --locked --version 0.6.0 --features libsql --root $WALSPOOL_TANSU_ROOT
# (default root ${CARGO_HOME:-~/.cargo}/walspool-tansu-0.6.0). Building it takes about
# 12 minutes on 2 idle cores (about 415 crates, SQLite's C source among them; 45 minutes
# when measured on 2 cores shared with other builds); the installed binary is reused
# afterwards. WALSPOOL_KAFKA_SERVER set to a tansu binary skips all that.

TANSU_VERSION=0.6.0

# shellcheck source=bg.sh
. "$(dirname "${BASH_SOURCE[0]}")/bg.sh"

_kafka_main() {
    local cmd port state_pid state_dir brokers bin dir i root
    cmd="${1:-start}"
    port="${2:-${WALSPOOL_KAFKA_PORT:-59092}}"
    state_pid="${TMPDIR:-/tmp}/walspool-kafka-$port.pid"
    state_dir="${TMPDIR:-/tmp}/walspool-kafka-$port.dir"
    brokers="127.0.0.1:$port"
    root="${WALSPOOL_TANSU_ROOT:-${CARGO_HOME:-$HOME/.cargo}/walspool-tansu-$TANSU_VERSION}"

    _kafka_bin() {
        if [ -n "${WALSPOOL_KAFKA_SERVER:-}" ] && [ -x "$WALSPOOL_KAFKA_SERVER" ]; then
            echo "$WALSPOOL_KAFKA_SERVER"
            return 0
        fi
        [ -x "$root/bin/tansu" ] && echo "$root/bin/tansu" && return 0
        return 1
    }

    _kafka_answers() {
        (exec 3<>"/dev/tcp/127.0.0.1/$port") >/dev/null 2>&1
    }

    _kafka_export() {
        echo "WALSPOOL_KAFKA_BROKERS=$brokers"
        export WALSPOOL_KAFKA_BROKERS="$brokers"
        if bin="$(_kafka_bin)"; then
            echo "WALSPOOL_KAFKA_SERVER=$bin"
            export WALSPOOL_KAFKA_SERVER="$bin"
        fi
        export WALSPOOL_KAFKA_PORT="$port"
    }

    # tansu 0.6's SQLite schema has no index on header (topition, offset_id), and a
    # fetch looks each record's headers up by those columns: every fetched record scans
    # the whole header table, so reading N records back costs O(N * store size) (100,000
    # records did not come back in 14 minutes). The index below (the store's own file,
    # through Python's sqlite3 while the broker runs; SQLite re-plans the broker's
    # statements when the schema changes) makes the same read-back take under a minute.
    # It changes how tansu finds rows, not what it stores or answers.
    _kafka_index() {
        python3 - "$1" <<'PY'
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], timeout=30)
for _ in range(300):
    if db.execute("select 1 from sqlite_master where type = 'table' and name = 'header'").fetchone():
        break
    time.sleep(0.1)
else:
    sys.exit("kafka.sh: tansu's store has no header table after 30 s")
db.execute("create index if not exists walspool_header_topition_offset on header (topition, offset_id)")
db.commit()
PY
    }

    case "$cmd" in
    start)
        if ! _kafka_bin >/dev/null; then
            if ! command -v cargo >/dev/null 2>&1; then
                echo "kafka.sh: no tansu and no cargo to install it with" >&2
                return 1
            fi
            echo "kafka.sh: installing tansu $TANSU_VERSION (sqlite storage) into $root; this takes ~12 min" >&2
            mkdir -p "$root" || return 1
            # The package's own Cargo.lock (--locked); a target dir of its own so the
            # project's build cache is not touched.
            CARGO_TARGET_DIR="$root/target" cargo install tansu --locked --version "$TANSU_VERSION" \
                --features libsql --root "$root" >"$root.install.log" 2>&1 || {
                echo "kafka.sh: installing tansu failed; log:" >&2
                tail -30 "$root.install.log" >&2
                return 1
            }
            rm -rf "$root/target"
        fi
        if _kafka_answers; then
            _kafka_export
            return 0
        fi
        bin="$(_kafka_bin)" || { echo "kafka.sh: no tansu" >&2; return 1; }
        dir="$(mktemp -d "${TMPDIR:-/tmp}/walspool-kafka.XXXXXX")" || return 1
        chmod 0700 "$dir"
        # sqlite://tansu.db is relative to the working directory: the temp dir.
        (cd "$dir" && exec "$bin" broker \
            --listener-url "tcp://127.0.0.1:$port" \
            --advertised-listener-url "tcp://127.0.0.1:$port" \
            --storage-engine "sqlite://tansu.db" \
            </dev/null >"$dir/broker.log" 2>&1) &
        echo $! >"$state_pid"
        echo "$dir" >"$state_dir"
        if ! _bg_wait 150 _kafka_answers; then
            echo "kafka.sh: tansu did not start; log:" >&2
            tail -30 "$dir/broker.log" >&2 2>/dev/null
            return 1
        fi
        _kafka_index "$dir/tansu.db" || return 1
        _kafka_export
        ;;
    stop)
        _bg_stop "$state_pid" "$state_dir"
        ;;
    status)
        _kafka_answers
        ;;
    *)
        echo "usage: $0 {start|stop|status} [PORT]" >&2
        return 2
        ;;
    esac
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    _kafka_main "$@"
    exit $?
else
    _kafka_main "$@"
fi
