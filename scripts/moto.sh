#!/usr/bin/env bash
# moto.sh — a local S3-compatible server (moto's server mode) for walspool's archive tests.
#
#   scripts/moto.sh install        create ./.venv-moto and pip-install moto[server] (if missing)
#   scripts/moto.sh start [PORT]   install if needed, start moto_server on 127.0.0.1:PORT in the
#                                  background (no-op when something already answers there),
#                                  wait until it answers, print WALSPOOL_S3_ENDPOINT=...
#   scripts/moto.sh stop [PORT]    stop the server this script started on PORT
#   scripts/moto.sh status [PORT]  exit 0 when a server answers on PORT
#
# PORT defaults to $MOTO_PORT or 5055. Every command is idempotent. When sourced
# (`. scripts/moto.sh start`), WALSPOOL_S3_ENDPOINT is exported into the calling shell.
# The archive tests (backends/tests/archive_s3.rs) run this script themselves when
# WALSPOOL_S3_ENDPOINT is unset or nothing answers there.

_moto_main() {
    local root cmd port venv pidfile logfile url
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    cmd="${1:-start}"
    port="${2:-${MOTO_PORT:-5055}}"
    venv="${MOTO_VENV:-$root/.venv-moto}"
    pidfile="$venv/moto-$port.pid"
    logfile="$venv/moto-$port.log"
    url="http://127.0.0.1:$port"

    _moto_answers() {
        curl -s -o /dev/null --max-time 2 "$url/" 2>/dev/null
    }

    _moto_install() {
        if [ -x "$venv/bin/moto_server" ]; then
            return 0
        fi
        echo "moto.sh: installing moto[server] into $venv" >&2
        python3 -m venv "$venv" || return 1
        "$venv/bin/pip" install --quiet --disable-pip-version-check 'moto[server]>=5' || return 1
        [ -x "$venv/bin/moto_server" ]
    }

    case "$cmd" in
    install)
        _moto_install
        ;;
    start)
        if _moto_answers; then
            echo "WALSPOOL_S3_ENDPOINT=$url"
            export WALSPOOL_S3_ENDPOINT="$url"
            return 0
        fi
        _moto_install || { echo "moto.sh: could not install moto" >&2; return 1; }
        # setsid: the server outlives this shell and is not hit by its job control.
        setsid "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$logfile" 2>&1 </dev/null &
        echo $! >"$pidfile"
        local i
        for i in $(seq 1 150); do
            if _moto_answers; then
                echo "WALSPOOL_S3_ENDPOINT=$url"
                export WALSPOOL_S3_ENDPOINT="$url"
                return 0
            fi
            if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
                echo "moto.sh: moto_server exited; log:" >&2
                cat "$logfile" >&2
                return 1
            fi
            sleep 0.2
        done
        echo "moto.sh: moto_server did not answer on $url within 30 s" >&2
        return 1
        ;;
    stop)
        if [ -f "$pidfile" ]; then
            local pid
            pid="$(cat "$pidfile")"
            kill "$pid" 2>/dev/null
            for _ in $(seq 1 50); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            kill -9 "$pid" 2>/dev/null
            rm -f "$pidfile"
        fi
        return 0
        ;;
    status)
        _moto_answers
        ;;
    *)
        echo "usage: $0 {install|start|stop|status} [PORT]" >&2
        return 2
        ;;
    esac
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    _moto_main "$@"
    exit $?
else
    _moto_main "$@"
fi
