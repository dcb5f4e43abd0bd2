#!/bin/sh
# Print the path of a Python interpreter that luigi_phot can use (3.12 or 3.13),
# or explain what is missing and exit 1.
#   photutils 3.1 (about 10x faster aperture sums than 3.0) needs Python >= 3.12;
#   luigi 3.8.1 supports Python < 3.14.
# $PYTHON, when set, is tried first.
ok() {
    "$1" -c 'import sys, venv; sys.exit(0 if (3, 12) <= sys.version_info[:2] < (3, 14) else 1)' 2>/dev/null
}
candidates="${PYTHON:-} python3.13 python3.12 python3 python"
if command -v pyenv >/dev/null 2>&1; then
    root=$(pyenv root 2>/dev/null)
    for v in $(ls -d "$root"/versions/3.13* "$root"/versions/3.12* 2>/dev/null | sort -rV); do
        candidates="$candidates $v/bin/python"
    done
fi
for c in "$HOME"/.pyenv/versions/3.13*/bin/python "$HOME"/.pyenv/versions/3.12*/bin/python \
         /usr/bin/python3.13 /usr/bin/python3.12 /usr/local/bin/python3.13 /usr/local/bin/python3.12; do
    candidates="$candidates $c"
done
for c in $candidates; do
    [ -n "$c" ] || continue
    p=$(command -v "$c" 2>/dev/null) || continue
    if ok "$p"; then echo "$p"; exit 0; fi
done
cat >&2 <<'MSG'
luigi_phot needs Python 3.12 or 3.13 (photutils 3.1 needs >= 3.12; luigi 3.8.1 needs < 3.14),
with the venv module, and none was found on PATH or under pyenv.
Install one (for example `pyenv install 3.12` or your system's python3.12 and python3.12-venv),
or point to it with: make PYTHON=/path/to/python3.12 <target>
MSG
exit 1
