# Driving an interactive DPDK testpmd through a FIFO (sourced, not run; needs lib/bench.sh for say
# and stop_pid). The caller starts each testpmd itself (its own log placement and options) and records
# it in three associative arrays it declares: pmd_pid[NAME] (process), pmd_fd[NAME] (the FIFO
# descriptor testpmd reads its commands from), pmd_log[NAME] (its output file); and sets `timeout`
# (seconds to wait for any one thing), `dpdk_run` and `tag` (the DPDK runtime folder is
# $dpdk_run/$tag-NAME, removed on quit).

wait_log() {   # wait_log NAME OFFSET REGEX: until REGEX appears in the log after byte OFFSET (false on timeout or exit)
    local name="$1" off="$2" re="$3" end=$((SECONDS + timeout))
    while ((SECONDS < end)); do
        tail -c "+$((off + 1))" "${pmd_log[$name]}" | grep -qE "$re" && return 0
        kill -0 "${pmd_pid[$name]}" 2>/dev/null || { tail -c "+$((off + 1))" "${pmd_log[$name]}" | grep -qE "$re"; return; }
        sleep 0.1
    done
    return 1
}

pmd_cmd() {   # pmd_cmd NAME COMMAND: runs it, prints its output (up to the next prompt)
    local name="$1" cmd="$2" off
    off=$(stat -c %s "${pmd_log[$name]}")
    echo "$cmd" >&"${pmd_fd[$name]}"
    wait_log "$name" "$off" 'testpmd> ' || { say "$name: no answer to '$cmd'"; return 1; }
    tail -c "+$((off + 1))" "${pmd_log[$name]}"
}

pmd_link_up() {   # pmd_link_up NAME [PORT]: until `show port info PORT` (default 0) says the link is up
    local end=$((SECONDS + timeout))
    while ((SECONDS < end)); do
        pmd_cmd "$1" "show port info ${2:-0}" | grep -q 'Link status: up' && return 0
        kill -0 "${pmd_pid[$1]}" 2>/dev/null || return 1
        sleep 0.5
    done
    return 1
}

pmd_quit() {   # pmd_quit NAME: `quit`, then TERM/KILL if it lingers; closes its FIFO, removes its runtime folder
    local name="$1" pid="${pmd_pid[$1]:-}" i fd
    [[ -n "$pid" ]] || return 0
    echo quit >&"${pmd_fd[$name]}" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    stop_pid "$pid"
    wait "$pid" 2>/dev/null || true
    fd="${pmd_fd[$name]}"; exec {fd}>&-
    rm -rf "${dpdk_run:?}/$tag-$name"
    unset "pmd_pid[$name]" "pmd_fd[$name]"
}
