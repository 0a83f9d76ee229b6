#!/usr/bin/env bash
# Create (or reuse) .venv-autobahn/: a Python 2.7 virtualenv holding
# Autobahn|Testsuite (autobahntestsuite 25.10.1), whose fuzzing server our
# conformance tests run against (see tests/conformance/autobahn.py).
#
# Idempotent: once the venv is complete a stamp file records what was
# installed, and a later run with the same pins returns at once. A venv that is
# missing, half-built or broken (e.g. its base Python was removed) is rebuilt.
#
# Needs:
#   * Python 2.7: pyenv's 2.7.18 (`pyenv prefix 2.7.18`), else `python2.7` on
#     PATH, or an explicit AUTOBAHN_PYTHON27=/path/to/python2.7.
#   * A Python 3 (AUTOBAHN_BOOTSTRAP_PYTHON, else python3.11, else python3) to
#     run virtualenv<20.22, the last virtualenv able to create 2.7 envs. It is
#     installed into a temporary --target dir, not into that Python.
#   * PyPI (pip) and gcc: wsaccel and the old wheels are built from sdists.
#
# Env overrides: AUTOBAHN_VENV (venv path), AUTOBAHN_PYTHON27,
# AUTOBAHN_BOOTSTRAP_PYTHON, AUTOBAHN_ENV_QUIET=1 (hide pip output).
#
# `autobahn-env.sh --check` builds nothing: it exits 0 when the venv is ready or
# can be built (a Python 2.7 is found), else prints one line saying why and how to
# get one and exits 3 (the conformance test skips on that; `make conformance` fails).
set -euo pipefail

CHECK_ONLY=0
if [ "${1:-}" = "--check" ]; then
    CHECK_ONLY=1
fi

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${AUTOBAHN_VENV:-$REPO_ROOT/.venv-autobahn}"
STAMP="$VENV/.autobahn-env.stamp"

log() { printf 'autobahn-env: %s\n' "$*" >&2; }
die() { printf 'autobahn-env: ERROR: %s\n' "$*" >&2; exit 1; }

# Everything installed into the venv, fully pinned (the pins from
# autobahntestsuite's sdist requires.txt, plus the transitive dependencies as
# resolved on 2.7 so that every build installs the same set).
PINS="
autobahntestsuite==25.10.1
autobahn[accelerate,twisted]==0.10.9
Twisted==19.10.0
txaio==2.1.0
incremental==16.10.1
pyOpenSSL==19.1.0
cryptography==3.3.2
zope.interface==4.6.0
Jinja2==2.11.3
MarkupSafe==1.1.1
Werkzeug==1.0.1
klein==17.10.0
service-identity==18.1.0
unittest2==1.1.0
six==1.16.0
setuptools==44.0.0
wsaccel==0.6.6
ujson==2.0.3
attrs==21.4.0
Automat==22.10.0
cffi==1.15.1
constantly==15.1.0
enum34==1.1.10
hyperlink==21.0.0
idna==2.10
ipaddress==1.0.23
pyasn1==0.5.1
pyasn1-modules==0.3.0
pycparser==2.21
PyHamcrest==1.10.1
typing==3.10.0.0
linecache2==1.0.0
traceback2==1.4.0
argparse==1.4.0
"
VIRTUALENV_PIN="virtualenv>=20.17,<20.22"
STAMP_CONTENT="v1 $VIRTUALENV_PIN $(printf '%s' "$PINS" | cksum)"

# Import check used both for the fast path and after installing.
CHECK_IMPORTS='import sys; assert sys.version_info[:2] == (2, 7); import twisted, autobahn, autobahntestsuite.fuzzing, wsaccel, ujson'

env_ok() {
    [ -f "$STAMP" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$STAMP_CONTENT" ] &&
        [ -f "$VENV/lib/python2.7/site-packages/autobahntestsuite/fuzzing.py" ] &&
        [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'pass' >/dev/null 2>&1
}

# Fast path, before taking the lock.
if env_ok; then
    exit 0
fi

# Serialise concurrent runs (e.g. several pytest-xdist workers); --check writes nothing.
LOCK="${TMPDIR:-/tmp}/autobahn-env.$(printf '%s' "$VENV" | cksum | cut -d' ' -f1).lock"
if [ "$CHECK_ONLY" = 0 ] && command -v flock >/dev/null 2>&1; then
    exec 9>"$LOCK"
    flock 9
    if env_ok; then
        exit 0
    fi
fi

find_python27() {
    local cand="" prefix=""
    if [ -n "${AUTOBAHN_PYTHON27:-}" ]; then
        cand="$AUTOBAHN_PYTHON27"
    elif command -v pyenv >/dev/null 2>&1 && prefix="$(pyenv prefix 2.7.18 2>/dev/null)" &&
        [ -x "$prefix/bin/python2.7" ]; then
        cand="$prefix/bin/python2.7"
    elif [ -x "${PYENV_ROOT:-$HOME/.pyenv}/versions/2.7.18/bin/python2.7" ]; then
        cand="${PYENV_ROOT:-$HOME/.pyenv}/versions/2.7.18/bin/python2.7"
    else
        # A pyenv shim on PATH may exist yet fail ("version not installed"),
        # so every candidate is checked by running it below.
        cand="$(command -v python2.7 || true)"
    fi
    if [ -z "$cand" ]; then
        return 1
    fi
    if ! "$cand" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (2, 7) else 1)' >/dev/null 2>&1; then
        log "candidate Python 2.7 '$cand' does not run as Python 2.7"
        return 1
    fi
    printf '%s\n' "$cand"
}

find_python3() {
    local cand
    for cand in "${AUTOBAHN_BOOTSTRAP_PYTHON:-}" python3.11 python3; do
        [ -n "$cand" ] || continue
        if command -v "$cand" >/dev/null 2>&1 &&
            "$cand" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 7) else 1)' >/dev/null 2>&1; then
            command -v "$cand"
            return 0
        fi
    done
    return 1
}

if [ "$CHECK_ONLY" = 1 ]; then
    if find_python27 >/dev/null 2>&1; then
        exit 0
    fi
    printf '%s\n' "Python 2.7 not found (Autobahn's fuzzing server runs only on 2.7): \
'pyenv install 2.7.18' or AUTOBAHN_PYTHON27=/path/to/python2.7"
    exit 3
fi

PY27="$(find_python27)" || die "Python 2.7 not found. Autobahn|Testsuite's fuzzing server runs only on Python 2.7.
  Looked for: \$AUTOBAHN_PYTHON27, 'pyenv prefix 2.7.18', ~/.pyenv/versions/2.7.18, python2.7 on PATH.
  Fix: 'pyenv install 2.7.18' (needs build deps: gcc make libssl-dev zlib1g-dev libbz2-dev
  libreadline-dev libsqlite3-dev libffi-dev), or set AUTOBAHN_PYTHON27=/path/to/python2.7."
PY3="$(find_python3)" || die "no Python >= 3.7 found to run virtualenv (set AUTOBAHN_BOOTSTRAP_PYTHON)"

PIP_QUIET=()
if [ "${AUTOBAHN_ENV_QUIET:-0}" = "1" ]; then
    PIP_QUIET=(-q)
fi

START=$SECONDS
log "building $VENV from $PY27 ($("$PY27" -c 'import sys; print(sys.version.split()[0])'))"
rm -rf "$VENV"

BOOT="$(mktemp -d "${TMPDIR:-/tmp}/autobahn-venv-boot.XXXXXX")"
trap 'rm -rf "$BOOT"' EXIT

log "installing '$VIRTUALENV_PIN' into a temporary dir (with $PY3)"
"$PY3" -m pip install ${PIP_QUIET[@]+"${PIP_QUIET[@]}"} --disable-pip-version-check --no-input \
    --target "$BOOT" "$VIRTUALENV_PIN" >&2 ||
    die "could not install $VIRTUALENV_PIN with $PY3 (is PyPI reachable?)"

# --no-download: seed pip/setuptools/wheel from the wheels bundled in
# virtualenv itself (pip 20.3.4, the last pip for 2.7), no network needed.
PYTHONPATH="$BOOT" "$PY3" -m virtualenv --no-download --no-periodic-update \
    -p "$PY27" "$VENV" >&2 || die "virtualenv could not create $VENV with $PY27"

REQ="$BOOT/requirements-py27.txt"
printf '%s\n' "$PINS" >"$REQ"
log "installing autobahntestsuite and pins into $VENV (builds wsaccel etc. with gcc)"
PYTHONWARNINGS="ignore:DEPRECATION" "$VENV/bin/python" -m pip install ${PIP_QUIET[@]+"${PIP_QUIET[@]}"} \
    --disable-pip-version-check --no-input --no-warn-script-location \
    -r "$REQ" >&2 || die "pip install into $VENV failed (see pip output above)"

"$VENV/bin/python" -c "$CHECK_IMPORTS" ||
    die "the new venv $VENV cannot import the fuzzing server"

printf '%s' "$STAMP_CONTENT" >"$STAMP"
log "ready: $VENV ($((SECONDS - START))s)"
