# Helpers shared by the benchmark scripts (sourced, not run). The caller sets `timeout` (seconds to
# wait for any one thing) before calling wait_sockets.

say() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*"; }

stop_pid() {   # TERM, wait up to 5 s, then KILL; only for processes this script started
    local pid="$1" i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
}

wait_sockets() {  # wait_sockets PID SOCKET...: until every socket exists (false if PID dies)
    local pid="$1" end=$((SECONDS + timeout)) s ok; shift
    while ((SECONDS < end)); do
        ok=1; for s in "$@"; do [[ -S "$s" ]] || ok=0; done
        ((ok)) && return 0
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.2
    done
    return 1
}

median() { sort -g | awk '{v[NR] = $1} END {if (NR == 0) print 0; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
