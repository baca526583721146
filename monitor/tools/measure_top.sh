#!/usr/bin/env bash
# measure_top.sh BIN ROOT SECONDS: CPU of `walspool top` (release) over ROOT, in a tmux pane.
set -euo pipefail
BIN=$1 ROOT=$2 SECS=${3:-60}
SOCK=measure-$$
tmux -L $SOCK -f /dev/null new-session -d -s m -x 120 -y 40 "$BIN top --refresh 500ms $ROOT"
sleep 5
PID=$(pgrep -f "^$BIN top --refresh 500ms $ROOT" | head -1)
tick=$(getconf CLK_TCK)
read_cpu() { awk '{print $14+$15}' /proc/$PID/stat; }
a=$(read_cpu); t0=$(date +%s.%N)
sleep "$SECS"
b=$(read_cpu); t1=$(date +%s.%N)
rss=$(awk '/VmRSS/{print $2}' /proc/$PID/status)
tmux -L $SOCK capture-pane -p -t m | head -6
tmux -L $SOCK kill-server
python3 -c "import sys; a,b,t0,t1,tick=$a,$b,$t0,$t1,$tick; print(f'top cpu: {(b-a)/tick:.2f}s over {t1-t0:.1f}s = {100*(b-a)/tick/(t1-t0):.2f}% of a core; rss {$rss/1024:.1f} MiB')"
