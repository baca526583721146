#!/usr/bin/env bash
# postgres.sh — a throwaway PostgreSQL server on 127.0.0.1 for the PostgreSQL sink's tests.
#
#   scripts/postgres.sh start [PORT]   install Debian's postgresql if needed (root + apt),
#                                      initdb a fresh cluster in a new temp dir, start it on
#                                      127.0.0.1:PORT (no-op when a server already answers
#                                      there), print WALSPOOL_PG_URL=... and WALSPOOL_PG_DATA=...
#   scripts/postgres.sh stop [PORT]    stop the server this script started and delete its data
#   scripts/postgres.sh pause [PORT]   stop it (immediate shutdown, as in a crash), keep the data
#   scripts/postgres.sh resume [PORT]  start a paused server again on the same data
#   scripts/postgres.sh status [PORT]  exit 0 when a server answers on PORT
#
# PORT defaults to $WALSPOOL_PG_PORT or 55432. When sourced (`. scripts/postgres.sh
# start`), WALSPOOL_PG_URL and WALSPOOL_PG_DATA are exported into the calling shell.
# initdb refuses to run as root: as root the cluster belongs to the `postgres` user
# (created by the Debian package) and lives in a temp dir outside the checkout, which
# may sit in a directory that user cannot enter. Authentication is `trust` on
# 127.0.0.1 only. The data dir of the server on PORT is remembered in
# ${TMPDIR:-/tmp}/walspool-pg-PORT.datadir.

_pg_main() {
    local cmd port bindir owner state datadir url
    cmd="${1:-start}"
    port="${2:-${WALSPOOL_PG_PORT:-55432}}"
    state="${TMPDIR:-/tmp}/walspool-pg-$port.datadir"
    url="postgres://postgres@127.0.0.1:$port/postgres"

    _pg_bindir() {
        local d
        for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
            if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
                echo "$d"
                return 0
            fi
        done
        command -v pg_ctl >/dev/null 2>&1 && dirname "$(command -v pg_ctl)" && return 0
        return 1
    }

    _pg_install() {
        _pg_bindir >/dev/null && return 0
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            echo "postgres.sh: installing postgresql" >&2
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null || return 1
            _pg_bindir >/dev/null
        else
            echo "postgres.sh: please install PostgreSQL (Debian: apt-get install postgresql)" >&2
            return 1
        fi
    }

    # Runs a command as the cluster's owner: `postgres` when we are root, else ourselves.
    # From /: the checkout may sit in a directory that user cannot enter.
    _pg_as_owner() {
        if [ "$(id -u)" = 0 ]; then
            (cd / && runuser -u postgres -- "$@")
        else
            "$@"
        fi
    }

    _pg_answers() {
        local b
        b="$(_pg_bindir)" || return 1
        "$b/pg_isready" -q -h 127.0.0.1 -p "$port" -t 2 >/dev/null 2>&1
    }

    _pg_export() {
        echo "WALSPOOL_PG_URL=$url"
        export WALSPOOL_PG_URL="$url"
        if [ -f "$state" ]; then
            echo "WALSPOOL_PG_DATA=$(cat "$state")"
            export WALSPOOL_PG_DATA="$(cat "$state")"
        fi
        export WALSPOOL_PG_PORT="$port"
    }

    _pg_start_server() {
        _pg_as_owner "$bindir/pg_ctl" -D "$datadir" -l "$datadir/server.log" -w -t 60 \
            -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$datadir" \
            start >/dev/null || {
            echo "postgres.sh: pg_ctl start failed; log:" >&2
            cat "$datadir/server.log" >&2
            return 1
        }
    }

    case "$cmd" in
    start)
        if _pg_answers; then
            _pg_export
            return 0
        fi
        _pg_install || { echo "postgres.sh: no PostgreSQL" >&2; return 1; }
        bindir="$(_pg_bindir)"
        datadir="$(mktemp -d "${TMPDIR:-/tmp}/walspool-pg.XXXXXX")" || return 1
        if [ "$(id -u)" = 0 ]; then
            id postgres >/dev/null 2>&1 || { echo "postgres.sh: no postgres user" >&2; return 1; }
            chown postgres: "$datadir"
        fi
        chmod 0700 "$datadir"
        _pg_as_owner "$bindir/initdb" -D "$datadir/data" -U postgres --auth=trust \
            --no-instructions -E UTF8 >"$datadir/initdb.log" 2>&1 || {
            echo "postgres.sh: initdb failed; log:" >&2
            cat "$datadir/initdb.log" >&2
            return 1
        }
        echo "$datadir" >"$state"
        datadir="$datadir/data"
        _pg_start_server || return 1
        _pg_export
        ;;
    stop | pause)
        if [ ! -f "$state" ]; then
            [ "$cmd" = stop ] && return 0
            echo "postgres.sh: no server was started on port $port by this script" >&2
            return 1
        fi
        bindir="$(_pg_bindir)" || return 0
        datadir="$(cat "$state")"
        local mode=fast
        [ "$cmd" = pause ] && mode=immediate
        _pg_as_owner "$bindir/pg_ctl" -D "$datadir/data" -m "$mode" -w stop >/dev/null 2>&1
        if [ "$cmd" = stop ]; then
            rm -rf "$datadir" "$state"
        fi
        return 0
        ;;
    resume)
        [ -f "$state" ] || { echo "postgres.sh: no server was started on port $port" >&2; return 1; }
        _pg_answers && return 0
        bindir="$(_pg_bindir)" || return 1
        datadir="$(cat "$state")/data"
        _pg_start_server
        ;;
    status)
        _pg_answers
        ;;
    *)
        echo "usage: $0 {start|stop|pause|resume|status} [PORT]" >&2
        return 2
        ;;
    esac
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    _pg_main "$@"
    exit $?
else
    _pg_main "$@"
fi
