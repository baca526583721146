#!/usr/bin/env bash
# nats.sh — a throwaway NATS server with JetStream on 127.0.0.1 for the NATS sink's tests.
#
#   scripts/nats.sh start [PORT]   install Debian's nats-server if needed (root + apt), start
#                                  `nats-server -js -sd <new temp dir> -a 127.0.0.1 -p PORT`
#                                  in the background (no-op when a server already answers
#                                  there), print WALSPOOL_NATS_URL=... and WALSPOOL_NATS_SERVER=...
#   scripts/nats.sh stop [PORT]    stop the server this script started and delete its store
#   scripts/nats.sh status [PORT]  exit 0 when something answers on PORT
#
# PORT defaults to $WALSPOOL_NATS_PORT or 54222. When sourced (`. scripts/nats.sh start`),
# WALSPOOL_NATS_URL (the server's URL) and WALSPOOL_NATS_SERVER (the nats-server binary,
# which the outage test runs itself on another port) are exported into the calling shell.
# The server's pid and store dir are remembered in ${TMPDIR:-/tmp}/walspool-nats-PORT.{pid,dir}.

# shellcheck source=bg.sh
. "$(dirname "${BASH_SOURCE[0]}")/bg.sh"

_nats_main() {
    local cmd port state_pid state_dir url bin dir i
    cmd="${1:-start}"
    port="${2:-${WALSPOOL_NATS_PORT:-54222}}"
    state_pid="${TMPDIR:-/tmp}/walspool-nats-$port.pid"
    state_dir="${TMPDIR:-/tmp}/walspool-nats-$port.dir"
    url="nats://127.0.0.1:$port"

    _nats_bin() {
        command -v nats-server 2>/dev/null && return 0
        [ -x /usr/sbin/nats-server ] && echo /usr/sbin/nats-server && return 0
        [ -x /usr/bin/nats-server ] && echo /usr/bin/nats-server && return 0
        return 1
    }

    _nats_answers() {
        (exec 3<>"/dev/tcp/127.0.0.1/$port") >/dev/null 2>&1
    }

    _nats_export() {
        echo "WALSPOOL_NATS_URL=$url"
        export WALSPOOL_NATS_URL="$url"
        if bin="$(_nats_bin)"; then
            echo "WALSPOOL_NATS_SERVER=$bin"
            export WALSPOOL_NATS_SERVER="$bin"
        fi
        export WALSPOOL_NATS_PORT="$port"
    }

    case "$cmd" in
    start)
        if _nats_answers; then
            _nats_export
            return 0
        fi
        if ! _nats_bin >/dev/null; then
            if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
                echo "nats.sh: installing nats-server" >&2
                apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nats-server >/dev/null || return 1
            else
                echo "nats.sh: please install nats-server (Debian: apt-get install nats-server)" >&2
                return 1
            fi
        fi
        bin="$(_nats_bin)" || { echo "nats.sh: no nats-server" >&2; return 1; }
        dir="$(mktemp -d "${TMPDIR:-/tmp}/walspool-nats.XXXXXX")" || return 1
        chmod 0700 "$dir"
        "$bin" -js -sd "$dir/store" -a 127.0.0.1 -p "$port" -l "$dir/server.log" </dev/null >/dev/null 2>&1 &
        echo $! >"$state_pid"
        echo "$dir" >"$state_dir"
        if ! _bg_wait 100 _nats_answers; then
            echo "nats.sh: nats-server did not start; log:" >&2
            cat "$dir/server.log" >&2 2>/dev/null
            return 1
        fi
        _nats_export
        ;;
    stop)
        _bg_stop "$state_pid" "$state_dir"
        ;;
    status)
        _nats_answers
        ;;
    *)
        echo "usage: $0 {start|stop|status} [PORT]" >&2
        return 2
        ;;
    esac
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    _nats_main "$@"
    exit $?
else
    _nats_main "$@"
fi
