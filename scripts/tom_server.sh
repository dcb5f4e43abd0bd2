#!/bin/sh
# A local TOM Toolkit server (tomtoolkit 3.x, SQLite) on 127.0.0.1, for trying
# uploads by hand and for the tests in tests/test_tom.py.
#
#   scripts/tom_server.sh setup  [DIR]                       install and configure (once; later a quick no-op)
#   scripts/tom_server.sh start  [DIR] [--port P] [--data D] run it in the background, wait until it answers
#   scripts/tom_server.sh stop   [DIR] [--data D]
#   scripts/tom_server.sh status [DIR] [--data D]             exit 0 when running, 3 when not
#
# DIR (default <repo>/.tom) holds the virtual environment (venv/), the Django
# project (mytom/), a freshly migrated database with one superuser
# (template/db.sqlite3) and that user's credentials (credentials.json, mode 600).
#
# D (default DIR/data) is the server's state: db.sqlite3 (copied from the
# template when absent), uploaded files (media/), server.log, server.pid,
# server.json (url, port, pid) and tom_config.yaml (mode 600), a TOM account file
# for luigi_phot (point tom.config_file of a reduction_config.yaml at it).
# Tests start their own server with a throw-away D, so they never see, or
# change, what a user uploaded by hand.
#
# The interpreter for the venv is $PYTHON when it is Python 3.10-3.13, else the
# one scripts/find_python.sh finds (3.12/3.13, the project's own requirement).
set -eu
# The database holds the user's API token: keep everything this script makes private.
umask 077

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
TOM_USER=admin
PROJECT=mytom   # tom_setup requires the project directory and its settings package to share a name

die() { echo "tom_server.sh: $*" >&2; exit 1; }

usage() {
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

[ $# -ge 1 ] || usage 2
CMD=$1; shift
DIR=""; PORT=8000; DATA=""
while [ $# -gt 0 ]; do
    case $1 in
        --port) [ $# -ge 2 ] || die "--port needs a value"; PORT=$2; shift 2 ;;
        --port=*) PORT=${1#--port=}; shift ;;
        --data) [ $# -ge 2 ] || die "--data needs a value"; DATA=$2; shift 2 ;;
        --data=*) DATA=${1#--data=}; shift ;;
        -h|--help) usage 0 ;;
        -*) die "unknown option $1" ;;
        *) [ -z "$DIR" ] || die "unexpected argument $1"; DIR=$1; shift ;;
    esac
done
case $PORT in ''|*[!0-9]*) die "--port must be a number, not '$PORT'" ;; esac
DIR=${DIR:-$REPO/.tom}
[ "$CMD" != setup ] || mkdir -p "$DIR"
abs=$(cd "$DIR" 2>/dev/null && pwd) || die "no TOM directory $DIR; run: $0 setup $DIR"
DIR=$abs
DATA=${DATA:-$DIR/data}
case $DATA in /*) ;; *) DATA=$PWD/$DATA ;; esac
VPY=$DIR/venv/bin/python

python_version_ok() {   # Python 3.10-3.13 with venv
    "$1" -c 'import sys, venv; sys.exit(0 if (3, 10) <= sys.version_info[:2] < (3, 14) else 1)' 2>/dev/null
}

choose_python() {
    if [ -n "${PYTHON:-}" ] && p=$(command -v "$PYTHON" 2>/dev/null) && python_version_ok "$p"; then
        echo "$p"
    else
        "$HERE/find_python.sh"
    fi
}

manage() {   # manage.py with the state directory given as $LUIGI_PHOT_TOM_DATA
    data=$1; shift
    (cd "$DIR/$PROJECT" && LUIGI_PHOT_TOM_DATA=$data "$VPY" manage.py "$@")
}

# ---------------------------------------------------------------------------
# setup
# ---------------------------------------------------------------------------

write_local_settings() {
    # tom_setup's settings.py ends with `from local_settings import *`: the
    # state directory is chosen here, per process, from $LUIGI_PHOT_TOM_DATA.
    cat > "$DIR/$PROJECT/local_settings.py" <<'EOF'
# Written by luigi_phot scripts/tom_server.sh (imported at the end of settings.py).
# The database and uploaded files live in $LUIGI_PHOT_TOM_DATA (default ../data),
# so that several servers (a user's, a test run's) can share this installation.
import os

_data = os.environ.get('LUIGI_PHOT_TOM_DATA') or os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'data')

DATABASES = {'default': {'ENGINE': 'django.db.backends.sqlite3',
                         'NAME': os.path.join(_data, 'db.sqlite3')}}
MEDIA_ROOT = os.path.join(_data, 'media')
# The generated settings cache in the shared system temporary directory.
CACHES = {'default': {'BACKEND': 'django.core.cache.backends.locmem.LocMemCache'}}
ALLOWED_HOSTS = ['127.0.0.1', 'localhost']
EOF
}

do_setup() {
    if [ -f "$DIR/setup.done" ] && [ -x "$VPY" ] && [ -f "$DIR/template/db.sqlite3" ] \
            && [ -f "$DIR/credentials.json" ]; then
        echo "TOM already set up in $DIR"
        return 0
    fi
    log=$DIR/setup.log
    : > "$log"
    echo "Setting up a local TOM Toolkit in $DIR (log: $log)"

    if [ ! -f "$DIR/venv/.tomtoolkit-installed" ]; then
        py=$(choose_python) || exit 1
        echo "  virtual environment with $py ($("$py" -V 2>&1)); installing tomtoolkit (about 70 s)"
        rm -rf "$DIR/venv"
        "$py" -m venv "$DIR/venv"
        "$VPY" -m pip install --disable-pip-version-check 'tomtoolkit>=3,<4' >> "$log" 2>&1 \
            || die "pip install tomtoolkit failed; see $log"
        touch "$DIR/venv/.tomtoolkit-installed"
    fi

    if ! grep -q 'Generated by ./manage.py tom_setup' "$DIR/$PROJECT/$PROJECT/settings.py" 2>/dev/null; then
        echo "  Django project $DIR/$PROJECT (startproject, tom_setup)"
        rm -rf "${DIR:?}/$PROJECT"
        (cd "$DIR" && "$DIR/venv/bin/django-admin" startproject "$PROJECT") >> "$log" 2>&1
        "$VPY" - "$DIR/$PROJECT/$PROJECT/settings.py" <<'EOF'
import sys
path = sys.argv[1]
text = open(path).read()
anchor = "'django.contrib.staticfiles',"
if anchor not in text:
    sys.exit(f"{path}: no {anchor} in INSTALLED_APPS")
open(path, 'w').write(text.replace(anchor, anchor + "\n    'tom_setup',", 1))
EOF
        # Answers: continue, default custom-code app, SIDEREAL targets, no hints.
        # Its own superuser prompt is skipped (no TTY); its migrate used the
        # startproject settings, so that database is thrown away.
        printf 'y\n\n1\nn\n' | (cd "$DIR/$PROJECT" && "$VPY" manage.py tom_setup) >> "$log" 2>&1 \
            || die "manage.py tom_setup failed; see $log"
        grep -q 'Generated by ./manage.py tom_setup' "$DIR/$PROJECT/$PROJECT/settings.py" \
            || die "manage.py tom_setup did not write settings.py; see $log"
        rm -f "$DIR/$PROJECT/db.sqlite3"
    fi
    write_local_settings

    echo "  database template and superuser '$TOM_USER'"
    rm -rf "$DIR/template" "$DIR/template.tmp"
    mkdir -p "$DIR/template.tmp"
    manage "$DIR/template.tmp" migrate --noinput >> "$log" 2>&1 || die "manage.py migrate failed; see $log"
    password=$("$VPY" -c 'import secrets; print(secrets.token_urlsafe(18))')
    DJANGO_SUPERUSER_PASSWORD=$password manage "$DIR/template.tmp" createsuperuser --noinput \
        --username "$TOM_USER" --email "$TOM_USER@localhost" >> "$log" 2>&1 \
        || die "manage.py createsuperuser failed; see $log"
    # tom_common creates every user's API token when the user is saved.
    token=$(manage "$DIR/template.tmp" shell -c \
        "from rest_framework.authtoken.models import Token; print(Token.objects.get(user__username='$TOM_USER').key)" \
        2>> "$log" | tail -n 1)
    [ -n "$token" ] || die "could not read the API token of $TOM_USER; see $log"
    (umask 077 && TOM_PASSWORD=$password TOM_TOKEN=$token "$VPY" - "$DIR/credentials.json" "$TOM_USER" <<'EOF'
import json, os, sys
with open(sys.argv[1], 'w') as f:
    json.dump({'username': sys.argv[2], 'password': os.environ['TOM_PASSWORD'],
               'api_token': os.environ['TOM_TOKEN']}, f, indent=1)
    f.write('\n')
EOF
    )
    mv "$DIR/template.tmp" "$DIR/template"
    touch "$DIR/setup.done"
    echo "TOM set up in $DIR; credentials of '$TOM_USER' in $DIR/credentials.json"
    echo "Start it with: $0 start $DIR [--port P]"
}

# ---------------------------------------------------------------------------
# start / stop / status
# ---------------------------------------------------------------------------

PIDFILE=$DATA/server.pid

server_pid() {   # pid of the running server of $DATA, or nothing
    [ -f "$PIDFILE" ] || return 0
    pid=$(cat "$PIDFILE" 2>/dev/null || true)
    case $pid in ''|*[!0-9]*) return 0 ;; esac
    # A recycled pid must not be mistaken for the server.
    if ps -p "$pid" -o args= 2>/dev/null | grep -q 'manage.py runserver'; then
        echo "$pid"
    fi
}

server_url() {
    "$VPY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["url"])' "$DATA/server.json" 2>/dev/null || true
}

do_start() {
    [ -f "$DIR/setup.done" ] || die "no TOM set up in $DIR; run: $0 setup $DIR"
    pid=$(server_pid)
    if [ -n "$pid" ]; then
        echo "TOM already running at $(server_url) (pid $pid); credentials in $DATA/tom_config.yaml"
        return 0
    fi
    # SO_REUSEADDR as the server itself binds: connections of an earlier run
    # in TIME_WAIT do not make the port busy.
    "$VPY" -c 'import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError as e:
    sys.exit(f"tom_server.sh: port {sys.argv[1]} on 127.0.0.1 is not free ({e.strerror})")' "$PORT"
    mkdir -p "$DATA"
    [ -f "$DATA/db.sqlite3" ] || cp "$DIR/template/db.sqlite3" "$DATA/db.sqlite3"
    url=http://127.0.0.1:$PORT
    (umask 077 && "$VPY" - "$DIR/credentials.json" "$DATA/tom_config.yaml" "$url" <<'EOF'
import json, sys
cred = json.load(open(sys.argv[1]))
with open(sys.argv[2], 'w') as f:
    f.write('# Account on the local TOM started by scripts/tom_server.sh (see luigi_phot/examples/tom_config.yaml)\n')
    f.write(f"url: '{sys.argv[3]}'\ntom_user_id: '{cred['username']}'\ntom_password: '{cred['password']}'\n")
EOF
    )
    (cd "$DIR/$PROJECT" && LUIGI_PHOT_TOM_DATA=$DATA exec nohup "$VPY" manage.py runserver \
        "127.0.0.1:$PORT" --noreload < /dev/null > "$DATA/server.log" 2>&1) &
    pid=$!
    echo "$pid" > "$PIDFILE"
    printf '{"url": "%s", "port": %s, "pid": %s, "data": "%s"}\n' "$url" "$PORT" "$pid" "$DATA" > "$DATA/server.json"
    if ! "$VPY" - "$url" "$pid" <<'EOF'
import os, sys, time, urllib.error, urllib.request
url, pid = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit(1)
    try:
        urllib.request.urlopen(url + '/api/', timeout=2)
        sys.exit(0)
    except urllib.error.HTTPError:
        sys.exit(0)      # it answers
    except OSError:
        time.sleep(0.2)
sys.exit(1)
EOF
    then
        kill "$pid" 2>/dev/null || true
        rm -f "$PIDFILE"
        tail -n 20 "$DATA/server.log" >&2
        die "the TOM did not start on $url; log: $DATA/server.log"
    fi
    echo "TOM running at $url (pid $pid, log $DATA/server.log)"
    echo "Account for luigi_phot: $DATA/tom_config.yaml (web login: user '$TOM_USER', password in that file)"
}

do_stop() {
    pid=$(server_pid)
    if [ -z "$pid" ]; then
        rm -f "$PIDFILE"
        echo "TOM not running (state $DATA)"
        return 0
    fi
    kill "$pid" 2>/dev/null || true
    i=0
    while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    rm -f "$PIDFILE"
    echo "TOM stopped (pid $pid)"
}

do_status() {
    pid=$(server_pid)
    if [ -n "$pid" ]; then
        echo "TOM running at $(server_url) (pid $pid, state $DATA)"
    else
        echo "TOM not running (state $DATA)"
        exit 3
    fi
}

case $CMD in
    setup) do_setup ;;
    start) do_start ;;
    stop) do_stop ;;
    status) do_status ;;
    -h|--help|help) usage 0 ;;
    *) echo "tom_server.sh: unknown command '$CMD'" >&2; usage 2 ;;
esac
