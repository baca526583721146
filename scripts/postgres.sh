#!/usr/bin/env bash
# postgres.sh — a throwaway PostgreSQL server on 127.0.0.1 for the PostgreSQL sink's tests.
#
#   scripts/postgres.sh start [PORT]   install Debian's postgresql if needed (root + apt),
#                                      initdb a fresh cluster in a new temp dir, start it on
#                                      127.0.0.1:PORT with TLS on (no-op when a server already
#                                      answers there), print WALSPOOL_PG_URL=...,
#                                      WALSPOOL_PG_DATA=... and WALSPOOL_PG_CA=...
#   scripts/postgres.sh stop [PORT]    stop the server this script started and delete its data
#   scripts/postgres.sh pause [PORT]   stop it (immediate shutdown, as in a crash), keep the data
#   scripts/postgres.sh resume [PORT]  start a paused server again on the same data
#   scripts/postgres.sh status [PORT]  exit 0 when a server answers on PORT
#
# PORT defaults to $WALSPOOL_PG_PORT or 55432. When sourced (`. scripts/postgres.sh
# start`), WALSPOOL_PG_URL, WALSPOOL_PG_DATA and WALSPOOL_PG_CA are exported into the
# calling shell.
# TLS: `start` makes, with the openssl CLI (Debian's `openssl`, installed as root if
# missing), a throwaway CA (ca.crt in the cluster's temp dir, WALSPOOL_PG_CA) and a
# server certificate it signs for localhost and 127.0.0.1 (subjectAltName), written as
# server.crt and server.key (the key 0600; both the cluster owner's) in the data dir
# (the CA's key is deleted), and starts the
# server (and `resume` restarts it) with ssl=on and them. Plain connections still work
# (pg_hba `host` lines match both), so sslmode=disable/prefer clients are unaffected.
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
            if [ -f "$(cat "$state")/ca.crt" ]; then
                echo "WALSPOOL_PG_CA=$(cat "$state")/ca.crt"
                export WALSPOOL_PG_CA="$(cat "$state")/ca.crt"
            fi
        fi
        export WALSPOOL_PG_PORT="$port"
    }

    _pg_openssl() {
        command -v openssl >/dev/null 2>&1 && return 0
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            echo "postgres.sh: installing openssl" >&2
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null || return 1
        else
            echo "postgres.sh: please install the openssl CLI (Debian: apt-get install openssl)" >&2
            return 1
        fi
    }

    # A throwaway CA in $1 (ca.crt, ca.key) and a server certificate it signs for
    # localhost and 127.0.0.1 in $1/data (server.crt, server.key: 0600, the owner's).
    _pg_make_certs() {
        local top="$1" ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
        _pg_openssl || return 1
        (
            set -e
            cd "$top"
            openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.crt -days 30 \
                -subj "/CN=walspool test CA" \
                -addext "basicConstraints=critical,CA:TRUE" \
                -addext "keyUsage=critical,keyCertSign,cRLSign"
            openssl req -new "${ec[@]}" -keyout server.key -out server.csr -subj "/CN=localhost"
            printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=CA:FALSE" \
                "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >server.ext
            openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -set_serial "0x$(openssl rand -hex 8)" \
                -days 30 -extfile server.ext -out server.crt
            rm -f server.csr server.ext ca.key
            chmod 0644 ca.crt
            chmod 0600 server.key
            mv server.crt server.key data/
            if [ "$(id -u)" = 0 ]; then
                chown postgres: ca.crt data/server.crt data/server.key
            fi
        ) >"$top/certs.log" 2>&1 || {
            echo "postgres.sh: making the TLS certificates failed; log:" >&2
            cat "$top/certs.log" >&2
            return 1
        }
    }

    _pg_start_server() {
        local ssl=""
        if [ -f "$datadir/server.crt" ] && [ -f "$datadir/server.key" ]; then
            ssl=" -c ssl=on -c ssl_cert_file=$datadir/server.crt -c ssl_key_file=$datadir/server.key"
        fi
        _pg_as_owner "$bindir/pg_ctl" -D "$datadir" -l "$datadir/server.log" -w -t 60 \
            -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$datadir$ssl" \
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
        _pg_make_certs "$datadir" || return 1
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
