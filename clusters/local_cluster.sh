#!/usr/bin/env bash
# A 2-node Ray cluster on ONE machine, for testing `ray job submit` and multi-node code paths.
#
#   clusters/local_cluster.sh start    # head + worker, two separate `ray start` processes
#   clusters/local_cluster.sh status   # `ray status` + the PIDs this cluster owns
#   clusters/local_cluster.sh env      # `eval "$(clusters/local_cluster.sh env)"` for the ray CLI
#   clusters/local_cluster.sh pids     # every PID of this cluster (its processes + descendants)
#   clusters/local_cluster.sh stop     # SIGTERM, then SIGKILL, every PID of this cluster
#
# Why not `ray stop`: it kills EVERY Ray process of the machine (other users' clusters, a test
# session's ray.init()). `stop` here kills only processes whose command line names this
# cluster's directory, plus their descendants (workers, job drivers, dashboard subprocesses).
#
# Settings (environment variables):
#   RAYMETA_CLUSTER_DIR      state dir: head/ and worker/ temp dirs, auth_token  [/tmp/raymeta-cluster]
#                            (at most 36 chars: Ray puts unix sockets below it)
#   RAYMETA_GCS_PORT         head GCS port (`--address 127.0.0.1:PORT`)           [6379]
#   RAYMETA_DASHBOARD_PORT   dashboard / job server (`ray job submit --address`)  [8265]
#   RAYMETA_PORT_BASE        first of ~420 ports used for the internal services   [23000]
#   RAYMETA_HEAD_CPUS / RAYMETA_WORKER_CPUS   CPUs advertised per node             [1 / 1]
#   RAYMETA_OBJECT_STORE_BYTES  object store size per node                        [300000000]
#   RAYMETA_START_TRIES      attempts per `ray start` (slow machines miss Ray's 30 s) [3]
#   RAY_AUTH_MODE            token (default) or disabled. With token a cluster-specific token is
#                            generated in $RAYMETA_CLUSTER_DIR/auth_token and passed to head,
#                            worker and CLI via RAY_AUTH_TOKEN_PATH (~/.ray/auth_token is untouched).
#   RAY_BIN                  the `ray` executable [the one next to this repo's .venv, else PATH]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
CLUSTER_DIR="${RAYMETA_CLUSTER_DIR:-/tmp/raymeta-cluster}"
GCS_PORT="${RAYMETA_GCS_PORT:-6379}"
DASHBOARD_PORT="${RAYMETA_DASHBOARD_PORT:-8265}"
BASE="${RAYMETA_PORT_BASE:-23000}"
HEAD_CPUS="${RAYMETA_HEAD_CPUS:-1}"
WORKER_CPUS="${RAYMETA_WORKER_CPUS:-1}"
OBJ_BYTES="${RAYMETA_OBJECT_STORE_BYTES:-300000000}"
TRIES="${RAYMETA_START_TRIES:-3}"
AUTH_MODE="${RAY_AUTH_MODE:-token}"
if [[ -z "${RAY_BIN:-}" ]]; then
    if [[ -x "$repo/.venv/bin/ray" ]]; then RAY_BIN="$repo/.venv/bin/ray"; else RAY_BIN="$(command -v ray || true)"; fi
fi

die() { echo "local_cluster.sh: error: $*" >&2; exit 2; }

case "$AUTH_MODE" in token | disabled) ;; *) die "RAY_AUTH_MODE must be 'token' or 'disabled', got '$AUTH_MODE'" ;; esac
[[ "$CLUSTER_DIR" = /* ]] || die "RAYMETA_CLUSTER_DIR must be an absolute path, got '$CLUSTER_DIR'"
# Ray's sockets live at DIR/head/session_<date>_<pid>/sockets/plasma_store (~70 chars below DIR)
# and a unix socket path is limited to 107 bytes.
[[ ${#CLUSTER_DIR} -le 36 ]] || die "RAYMETA_CLUSTER_DIR is too long for Ray's unix sockets (max 36 chars): $CLUSTER_DIR"
for p in "$GCS_PORT" "$DASHBOARD_PORT" "$BASE" "$HEAD_CPUS" "$WORKER_CPUS" "$OBJ_BYTES" "$TRIES"; do
    [[ "$p" =~ ^[0-9]+$ ]] || die "port / cpu / byte settings must be integers, got '$p'"
done

# Everything Ray (head, worker, job drivers, the CLI) must agree on the auth mode.
export RAY_AUTH_MODE="$AUTH_MODE"
export RAY_USAGE_STATS_ENABLED=0
if [[ "$AUTH_MODE" == token ]]; then
    export RAY_AUTH_TOKEN_PATH="$CLUSTER_DIR/auth_token"
    unset RAY_AUTH_TOKEN
else
    unset RAY_AUTH_TOKEN_PATH RAY_AUTH_TOKEN
fi

# PIDs whose command line names the cluster dir or its GCS address (`--address=IP:PORT` /
# `--gcs-address=IP:PORT`: the Ray client server names no dir), plus all their descendants.
# Both are passed through the environment so the awk process itself never matches.
# With an argument (a sub-dir such as $CLUSTER_DIR/worker) only that dir is matched.
cluster_pids() {
    local table dir="${1:-$CLUSTER_DIR}" gcs=":$GCS_PORT"
    [[ $# -gt 0 ]] && gcs="-"
    table="$(ps -ww -eo pid=,ppid=,args= 2>/dev/null || true)"
    DIR="$dir/" GCS="$gcs" SELF="$$" awk '
        function gcs(a,   n, i, w) {
            if (ENVIRON["GCS"] == "-") return 0
            n = split(a, w, " ")
            for (i = 1; i <= n; i++)
                if (w[i] ~ /^--(gcs-)?address=/ && substr(w[i], length(w[i]) - length(ENVIRON["GCS"]) + 1) == ENVIRON["GCS"]) return 1
            return 0
        }
        { pid=$1; ppid=$2; $1=""; $2=""; parent[pid]=ppid; args[pid]=$0 }
        END {
            for (p in args) if (p != ENVIRON["SELF"] && (index(args[p], ENVIRON["DIR"]) || gcs(args[p]))) mark[p]=1
            changed=1
            while (changed) { changed=0
                for (p in parent) if (!(p in mark) && (parent[p] in mark)) { mark[p]=1; changed=1 } }
            for (p in mark) print p
        }' <<<"$table" | sort -n
}

# A process counts as alive unless it is gone or a zombie (a zombie has released everything;
# it only waits for a parent that reaps it, which in some containers never happens).
alive() {
    local p st
    for p in "$@"; do
        st="$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null || true)"
        [[ -n "$st" && "$st" != Z ]] && echo "$p"
    done
    return 0
}

do_status() {
    local pids
    pids="$(cluster_pids | tr '\n' ' ')"
    if [[ -z "${pids// /}" ]]; then
        echo "local cluster ($CLUSTER_DIR): not running"
        return 3
    fi
    echo "local cluster ($CLUSTER_DIR): running; gcs 127.0.0.1:$GCS_PORT, dashboard http://127.0.0.1:$DASHBOARD_PORT, RAY_AUTH_MODE=$AUTH_MODE"
    echo "pids: $pids"
    "$RAY_BIN" status --address "127.0.0.1:$GCS_PORT" || true
}

# SIGTERM the given processes, wait up to 15 s, then SIGKILL what is left.
kill_all() {
    local pids="$*" left i
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    for i in $(seq 1 30); do
        # shellcheck disable=SC2086
        left="$(alive $pids)"
        [[ -z "$left" ]] && return 0
        sleep 0.5
    done
    # shellcheck disable=SC2086
    kill -KILL $left 2>/dev/null || true
    sleep 0.5
}

do_stop() {
    local pids left
    pids="$(cluster_pids)"
    if [[ -z "$pids" ]]; then
        echo "local cluster ($CLUSTER_DIR): nothing to stop"
        return 0
    fi
    # shellcheck disable=SC2086
    kill_all $pids
    # Anything spawned meanwhile (a worker process forked during shutdown).
    left="$(cluster_pids)"
    if [[ -n "$left" ]]; then
        # shellcheck disable=SC2086
        kill -KILL $left 2>/dev/null || true
        sleep 0.5
    fi
    left="$(cluster_pids)"
    [[ -z "$left" ]] || die "processes survived SIGKILL: $(echo $left)"
    echo "local cluster ($CLUSTER_DIR): stopped"
}

# retry NODE CMD...: run a `ray start`, logging to $CLUSTER_DIR/NODE.log. `ray start` gives the
# raylet a hard-coded 30 s to register with the GCS, which an overloaded machine can miss: on
# failure, kill what that attempt left (the whole cluster for the head, the worker's processes
# for the worker) and try again, up to $RAYMETA_START_TRIES times.
retry() {
    local node="$1" try left
    shift
    for try in $(seq 1 "$TRIES"); do
        if "$@" >>"$CLUSTER_DIR/$node.log" 2>&1; then return 0; fi
        echo "  $node start attempt $try/$TRIES failed" >&2
        if [[ "$node" == head ]]; then left="$(cluster_pids)"; else left="$(cluster_pids "$CLUSTER_DIR/worker")"; fi
        # shellcheck disable=SC2086
        [[ -z "$left" ]] || kill_all $left
    done
    return 1
}

do_start() {
    [[ -n "$RAY_BIN" && -x "$RAY_BIN" ]] || die "no 'ray' executable found (pip install 'raymeta[cluster]' or set RAY_BIN)"
    [[ -z "$(cluster_pids)" ]] || die "a cluster is already running under $CLUSTER_DIR (run '$0 stop' first)"
    mkdir -p "$CLUSTER_DIR/head" "$CLUSTER_DIR/worker"
    : >"$CLUSTER_DIR/head.log"
    : >"$CLUSTER_DIR/worker.log"
    if [[ "$AUTH_MODE" == token && ! -s "$RAY_AUTH_TOKEN_PATH" ]]; then
        (umask 077 && "$(dirname "$RAY_BIN")/python" -c 'import secrets; print(secrets.token_hex(32), end="")' >"$RAY_AUTH_TOKEN_PATH.tmp" 2>/dev/null \
            || od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$RAY_AUTH_TOKEN_PATH.tmp")
        mv "$RAY_AUTH_TOKEN_PATH.tmp" "$RAY_AUTH_TOKEN_PATH"
    fi
    # Job entrypoints run with the PATH of `ray start`: put the venv first so `python` and
    # `raymeta` resolve to the interpreter that has raymeta installed.
    export PATH="$(dirname "$RAY_BIN"):$PATH"
    local common=(--node-ip-address 127.0.0.1 --object-store-memory "$OBJ_BYTES" --disable-usage-stats)
    echo "starting head (gcs 127.0.0.1:$GCS_PORT, dashboard 127.0.0.1:$DASHBOARD_PORT, RAY_AUTH_MODE=$AUTH_MODE)"
    if ! retry head "$RAY_BIN" start --head "${common[@]}" --port "$GCS_PORT" \
        --include-dashboard=true --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD_PORT" \
        --temp-dir "$CLUSTER_DIR/head" --num-cpus "$HEAD_CPUS" --num-gpus 0 --resources '{"head": 1}' \
        --ray-client-server-port "$((BASE + 9))" --node-manager-port "$((BASE + 1))" \
        --object-manager-port "$((BASE + 2))" --dashboard-agent-listen-port "$((BASE + 3))" \
        --dashboard-agent-grpc-port "$((BASE + 4))" --runtime-env-agent-port "$((BASE + 5))" \
        --metrics-export-port "$((BASE + 6))" --min-worker-port "$((BASE + 100))" \
        --max-worker-port "$((BASE + 249))"; then
        tail -n 20 "$CLUSTER_DIR/head.log" >&2
        do_stop >/dev/null 2>&1 || true
        die "head failed to start (log: $CLUSTER_DIR/head.log)"
    fi
    echo "starting worker (resources {\"worker\": 1})"
    if ! retry worker "$RAY_BIN" start --address "127.0.0.1:$GCS_PORT" "${common[@]}" \
        --temp-dir "$CLUSTER_DIR/worker" --num-cpus "$WORKER_CPUS" --num-gpus 0 --resources '{"worker": 1}' \
        --node-manager-port "$((BASE + 11))" --object-manager-port "$((BASE + 12))" \
        --dashboard-agent-listen-port "$((BASE + 13))" --dashboard-agent-grpc-port "$((BASE + 14))" \
        --runtime-env-agent-port "$((BASE + 15))" --metrics-export-port "$((BASE + 16))" \
        --min-worker-port "$((BASE + 250))" --max-worker-port "$((BASE + 399))"; then
        tail -n 20 "$CLUSTER_DIR/worker.log" >&2
        do_stop >/dev/null 2>&1 || true
        die "worker failed to start (log: $CLUSTER_DIR/worker.log)"
    fi
    echo "local cluster up: ray job submit --address http://127.0.0.1:$DASHBOARD_PORT --working-dir . -- raymeta ..."
    echo "set the CLI's auth first: eval \"\$($0 env)\""
}

do_env() {
    echo "export RAY_AUTH_MODE=$AUTH_MODE"
    if [[ "$AUTH_MODE" == token ]]; then
        echo "export RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH"
    else
        echo "unset RAY_AUTH_TOKEN_PATH RAY_AUTH_TOKEN"
    fi
    echo "export RAY_API_SERVER_ADDRESS=http://127.0.0.1:$DASHBOARD_PORT"
}

case "${1:-}" in
start) do_start ;;
stop) do_stop ;;
status) do_status ;;
pids) cluster_pids ;;
env) do_env ;;
*) die "usage: $0 start|stop|status|pids|env" ;;
esac
