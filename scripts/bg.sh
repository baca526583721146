#!/usr/bin/env bash
# bg.sh — helpers sourced by scripts/nats.sh and scripts/kafka.sh for a server they run
# in the background, remembered by a pid file and a file naming its temp dir.

# _bg_wait TRIES CHECK: runs CHECK every 0.1 s, at most TRIES times; exit 0 once it does.
_bg_wait() {
    local i
    for i in $(seq 1 "$1"); do
        "$2" && return 0
        sleep 0.1
    done
    "$2"
}

# _bg_stop PIDFILE DIRFILE: stops the process (SIGTERM, then SIGKILL after 5 s) and
# deletes its temp dir and both files.
_bg_stop() {
    local pidfile="$1" dirfile="$2" i
    if [ -f "$pidfile" ]; then
        kill "$(cat "$pidfile")" 2>/dev/null || true
        for i in $(seq 1 50); do
            kill -0 "$(cat "$pidfile")" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$(cat "$pidfile")" 2>/dev/null || true
        rm -f "$pidfile"
    fi
    if [ -f "$dirfile" ]; then
        rm -rf "$(cat "$dirfile")" "$dirfile"
    fi
    return 0
}
