#!/bin/sh
# The Luigi central scheduler (luigid) for luigi_phot, with task history.
#
#   scripts/luigid.sh start  [--dir D] [--port P] [--address A]   run it in the background, wait until it answers
#   scripts/luigid.sh stop   [--dir D]
#   scripts/luigid.sh status [--dir D]                             exit 0 when running, 3 when not
#
# D (default $LUIGI_PHOT_LUIGID_DIR, else <repo>/.luigid) holds everything:
# luigi.cfg (written on first start, edit it freely), state.pickle (the task
# graph kept across restarts), history.db (task history, SQLite), log/ (the
# server's log), luigid.pid and luigid.json (url, port, pid).
# P defaults to 8082, A to 127.0.0.1. luigid's API and visualiser have NO
# authentication: keep it on 127.0.0.1 and reach it through an SSH tunnel or an
# authenticating reverse proxy (docs/manager.md).
#
# The luigid program is $LUIGID, else <repo>/.venv/bin/luigid, else the one on PATH.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")

die() { echo "luigid.sh: $*" >&2; exit 1; }

usage() {
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

[ $# -ge 1 ] || usage 2
CMD=$1; shift
DIR=${LUIGI_PHOT_LUIGID_DIR:-$REPO/.luigid}; PORT=8082; ADDRESS=127.0.0.1
while [ $# -gt 0 ]; do
    case $1 in
        --dir) [ $# -ge 2 ] || die "--dir needs a value"; DIR=$2; shift 2 ;;
        --dir=*) DIR=${1#--dir=}; shift ;;
        --port) [ $# -ge 2 ] || die "--port needs a value"; PORT=$2; shift 2 ;;
        --port=*) PORT=${1#--port=}; shift ;;
        --address) [ $# -ge 2 ] || die "--address needs a value"; ADDRESS=$2; shift 2 ;;
        --address=*) ADDRESS=${1#--address=}; shift ;;
        -h|--help) usage 0 ;;
        *) die "unknown argument '$1' (see $0 --help)" ;;
    esac
done
case $PORT in ''|*[!0-9]*) die "--port must be a number, not '$PORT'" ;; esac
[ -n "$ADDRESS" ] || die "--address must not be empty"
case $DIR in /*) ;; *) DIR=$PWD/$DIR ;; esac
PIDFILE=$DIR/luigid.pid
INFO=$DIR/luigid.json

find_luigid() {
    if [ -n "${LUIGID:-}" ]; then
        [ -x "$LUIGID" ] || die "LUIGID=$LUIGID is not an executable"
        echo "$LUIGID"
    elif [ -x "$REPO/.venv/bin/luigid" ]; then
        echo "$REPO/.venv/bin/luigid"
    elif command -v luigid >/dev/null 2>&1; then
        command -v luigid
    else
        die "no luigid found: run 'make venv', or set LUIGID=/path/to/luigid"
    fi
}

server_pid() {   # pid of the luigid of $DIR when it runs, or nothing
    [ -f "$PIDFILE" ] || return 0
    pid=$(cat "$PIDFILE" 2>/dev/null || true)
    case $pid in ''|*[!0-9]*) return 0 ;; esac
    # A recycled pid must not be mistaken for the server.
    if ps -p "$pid" -o args= 2>/dev/null | grep -q 'luigid'; then
        echo "$pid"
    fi
}

info_field() {   # a field of luigid.json (written at start)
    sed -n "s/.*\"$1\": \"\{0,1\}\([^\",}]*\)\"\{0,1\}[,}].*/\1/p" "$INFO" 2>/dev/null || true
}

write_config() {
    [ -f "$DIR/luigi.cfg" ] && return 0
    cat > "$DIR/luigi.cfg" <<EOF
# luigid settings for luigi_phot, written by scripts/luigid.sh on the first start.
# Edit freely (restart luigid to apply); delete this file to get these defaults back.

[scheduler]
# Task history for the visualiser's History pages (needs SQLAlchemy < 2).
record_task_history = true
state_path = $DIR/state.pickle
# Finished tasks stay visible this long (s) after their last worker left.
remove_delay = 600
# A worker silent this long (s) is gone; its running task is marked FAILED.
worker_disconnect_delay = 60
# A failed task becomes PENDING again after this long (s). Nothing of luigi_phot reruns
# by itself: the manager's worker waits for free units, but each of its ReduceDataset
# tasks is tried once (disabled when it fails); run the manager again to retry.
retry_delay = 600
# Never disable a task for repeated failures (a disabled dataset would be refused
# for disable_persist seconds even after its problem was fixed).
retry_count = 1000000000
# Luigi ignores a new request to run a task that finished less than this long ago
# (10 s by default), which refuses a manager run soon after the previous one. Every
# luigi_phot task checks for itself that its work is still to be done, so 0 is safe.
stable_done_cooldown_secs = 0

[task_history]
db_connection = sqlite:///$DIR/history.db

[resources]
# Dataset reductions at once when no manager set it; each ReductionManager run
# sets it to its max_parallel (scheduler-wide, for every run using this luigid).
luigi_phot_dataset = 4
EOF
}

url_of() {   # the url clients use; a wildcard address is reached on 127.0.0.1
    case $1 in
        0.0.0.0|'::'|'[::]') host=127.0.0.1 ;;
        *:*) host="[$1]" ;;
        *) host=$1 ;;
    esac
    echo "http://$host:$2"
}

do_start() {
    pid=$(server_pid)
    if [ -n "$pid" ]; then
        echo "luigid already running at $(info_field url) (pid $pid, state $DIR)"
        return 0
    fi
    luigid=$(find_luigid)
    py=$(dirname "$luigid")/python
    [ -x "$py" ] || py=$(sed -n '1s/^#! *//p' "$luigid" | cut -d' ' -f1)
    "$py" -c 'import sqlalchemy, sys
sys.exit(0 if int(sqlalchemy.__version__.split(".")[0]) < 2 else
         f"luigid.sh: SQLAlchemy {sqlalchemy.__version__} is installed; luigid task history needs SQLAlchemy < 2")' \
        || exit 1
    # SO_REUSEADDR as luigid itself binds: connections in TIME_WAIT do not make the port busy.
    "$py" -c 'import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(family)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind((host, port))
except OSError as e:
    sys.exit(f"luigid.sh: cannot listen on {host} port {port} ({e.strerror})")' "$ADDRESS" "$PORT"
    mkdir -p "$DIR/log"
    write_config
    url=$(url_of "$ADDRESS" "$PORT")
    # Detached in a session of its own: it outlives this script and the terminal.
    "$py" - "$DIR" "$PIDFILE" "$luigid" --address "$ADDRESS" --port "$PORT" \
            --state-path "$DIR/state.pickle" --logdir "$DIR/log" <<'EOF'
import os, subprocess, sys
directory, pidfile, *command = sys.argv[1:]
env = dict(os.environ, LUIGI_CONFIG_PATH=os.path.join(directory, "luigi.cfg"))
with open(os.path.join(directory, "log", "luigid.out"), "ab") as out:
    proc = subprocess.Popen(command, cwd=directory, env=env, stdin=subprocess.DEVNULL, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)
with open(pidfile, "w") as fh:
    fh.write(f"{proc.pid}\n")
EOF
    pid=$(cat "$PIDFILE")
    printf '{"url": "%s", "address": "%s", "port": %s, "pid": %s, "dir": "%s"}\n' \
        "$url" "$ADDRESS" "$PORT" "$pid" "$DIR" > "$INFO"
    if ! "$py" - "$url" "$pid" <<'EOF'
import json, os, sys, time, urllib.request
url, pid = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit(1)
    try:
        with urllib.request.urlopen(url + "/api/resource_list?data=%7B%7D", timeout=2) as r:
            json.load(r)
        sys.exit(0)
    except (OSError, ValueError):
        time.sleep(0.2)
sys.exit(1)
EOF
    then
        kill "$pid" 2>/dev/null || true
        rm -f "$PIDFILE"
        tail -n 20 "$DIR/log/luigid.out" "$DIR/log/luigi-server.log" >&2 2>/dev/null || true
        die "luigid did not start on $url; logs in $DIR/log"
    fi
    echo "luigid running at $url (pid $pid); visualiser: $url/  history: $url/history"
    echo "state, history and logs in $DIR"
    case $ADDRESS in
        127.*|localhost|::1) ;;
        *) echo "WARNING: luigid listens on $ADDRESS: its API has no authentication, so anyone who can" \
                "reach port $PORT can read and change the task graph (see docs/manager.md)" >&2 ;;
    esac
}

do_stop() {
    pid=$(server_pid)
    if [ -z "$pid" ]; then
        rm -f "$PIDFILE"
        echo "luigid not running (state $DIR)"
        return 0
    fi
    kill "$pid" 2>/dev/null || true   # SIGTERM: luigid saves its state and exits
    i=0
    while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    rm -f "$PIDFILE"
    echo "luigid stopped (pid $pid)"
}

do_status() {
    pid=$(server_pid)
    if [ -n "$pid" ]; then
        echo "luigid running at $(info_field url) (pid $pid, state $DIR)"
    else
        echo "luigid not running (state $DIR)"
        exit 3
    fi
}

case $CMD in
    start) do_start ;;
    stop) do_stop ;;
    status) do_status ;;
    -h|--help|help) usage 0 ;;
    *) echo "luigid.sh: unknown command '$CMD'" >&2; usage 2 ;;
esac
