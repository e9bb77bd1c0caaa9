#!/usr/bin/env bash
# Install what cxtest's demo, tests and benchmarks need. Idempotent: a second
# run checks and exits in a second or two.
#
#   scripts/setup.sh            # from anywhere; works on the repository it lives in
#
# (a) Debian packages in APT_PACKAGES that are not installed yet (apt-get update
#     only when something is missing; sudo when not root).
# (b) .venv with python3 >= 3.11 and `pip install -e '.[test]'`, skipped while
#     .venv/.setup-stamp holds the sha256 of pyproject.toml.
# (c) the npm packages of the chat test peers (NPM_PEERS) by `npm ci` from their
#     lock files, skipped while node_modules/.setup-stamp holds the lock's sha256.
#
# Environment: PYTHON (interpreter used to create .venv, default python3),
#              CXTEST_SKIP_APT=1 (skip the Debian step, e.g. on a non-Debian dev box).
set -euo pipefail

# Real peers the tests talk to (PostgreSQL, Alertmanager, SIPp, baresip,
# Kamailio), flite, which voices the sandbox IVR's prompts, Node.js, which
# runs the chat test peers, and Chromium, the browser the web probe drives
# through Playwright (`playwright install` would download one; Debian's is used).
APT_PACKAGES="python3-venv postgresql prometheus-alertmanager sip-tester baresip kamailio flite nodejs chromium"

# Chat test peers from npm: Botkit's web adapter, and offline-directline.
NPM_PEERS="tests/peers/botkit tests/peers/directline"

MIN_PYTHON="3.11"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.setup-stamp"
PYTHON="${PYTHON:-python3}"

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root to run '$*' (not root and sudo is not installed)"
    fi
}

is_installed() {
    local status
    status="$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)"
    [[ "$status" == "install ok installed" ]]
}

# Debian starts the packaged cluster on install; our tests create their own
# throw-away clusters, so stop a system cluster that the install just started.
quiet_new_postgres() {
    command -v pg_lsclusters >/dev/null 2>&1 || return 0
    local ver name _port status _rest
    while read -r ver name _port status _rest; do
        if [[ "$status" == online* ]]; then
            say "stopping PostgreSQL cluster $ver/$name started by the install (tests run their own)"
            as_root pg_ctlcluster "$ver" "$name" stop || say "could not stop $ver/$name; leaving it running"
        fi
    done < <(pg_lsclusters --no-header 2>/dev/null || true)
}

# Debian may start the packaged Alertmanager on :9093 on install; the tests
# start their own on free ports, so stop a system one the install just started.
quiet_new_alertmanager() {
    command -v systemctl >/dev/null 2>&1 || return 0
    if systemctl is-active --quiet prometheus-alertmanager 2>/dev/null; then
        say "stopping the prometheus-alertmanager service started by the install (tests run their own)"
        as_root systemctl stop prometheus-alertmanager || say "could not stop prometheus-alertmanager; leaving it running"
    fi
}

apt_step() {
    if [[ "${CXTEST_SKIP_APT:-0}" == "1" ]]; then
        say "apt packages skipped (CXTEST_SKIP_APT=1)"
        return
    fi
    command -v dpkg-query >/dev/null 2>&1 || die "dpkg-query not found: this set-up needs Debian or Ubuntu (or set CXTEST_SKIP_APT=1 and install: $APT_PACKAGES)"

    local missing=() pkg
    for pkg in $APT_PACKAGES; do
        is_installed "$pkg" || missing+=("$pkg")
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        say "apt packages ok"
        return
    fi

    say "installing apt packages: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${missing[@]}" >/dev/null
    for pkg in "${missing[@]}"; do
        is_installed "$pkg" || die "apt package $pkg is still not installed after apt-get install"
        if [[ "$pkg" == "postgresql" ]]; then
            quiet_new_postgres
        fi
        if [[ "$pkg" == "prometheus-alertmanager" ]]; then
            quiet_new_alertmanager
        fi
    done
    say "apt packages ok"
}

python_ok() {  # $1 = interpreter; true when it runs and is >= MIN_PYTHON
    "$1" -c "import sys; sys.exit(0 if sys.version_info >= tuple(map(int, '$MIN_PYTHON'.split('.'))) else 1)" 2>/dev/null
}

python_step() {
    cd "$ROOT"
    if [[ -x "$VENV/bin/python" ]] && ! python_ok "$VENV/bin/python"; then
        die "$VENV uses $("$VENV/bin/python" -V 2>&1 || echo 'a broken interpreter'); need Python >= $MIN_PYTHON. Remove .venv and run again."
    fi
    if [[ ! -x "$VENV/bin/python" ]]; then
        command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found; install Python >= $MIN_PYTHON or set PYTHON=/path/to/python3.11"
        python_ok "$PYTHON" || die "$PYTHON is $("$PYTHON" -V 2>&1); need Python >= $MIN_PYTHON (set PYTHON=/path/to/python3.11)"
        say "creating .venv with $("$PYTHON" -V 2>&1)"
        "$PYTHON" -m venv "$VENV" || die "could not create .venv (on Debian: apt-get install python3-venv)"
    fi

    local want have=""
    want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
    [[ -f "$STAMP" ]] && have="$(<"$STAMP")"
    if [[ "$have" == "$want" ]]; then
        say "python deps ok"
        return
    fi

    say "installing python deps (pip install -e '.[test]')"
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/python" -m pip install --quiet -e '.[test]' \
        || die "pip install -e '.[test]' failed (see above)"
    printf '%s\n' "$want" >"$STAMP"
    say "python deps ok"
}

npm_step() {
    # NodeSource's nodejs package carries npm (and conflicts with Debian's npm); Debian's does not.
    if ! command -v npm >/dev/null 2>&1; then
        [[ "${CXTEST_SKIP_APT:-0}" == "1" ]] && die "npm not found: install Node.js with npm (CXTEST_SKIP_APT=1 is set)"
        say "installing apt package npm"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
        command -v npm >/dev/null 2>&1 || die "npm is still not found after apt-get install npm"
    fi

    local dir want have
    for dir in $NPM_PEERS; do
        want="$(sha256sum "$ROOT/$dir/package-lock.json" | cut -d' ' -f1)"
        have=""
        [[ -f "$ROOT/$dir/node_modules/.setup-stamp" ]] && have="$(<"$ROOT/$dir/node_modules/.setup-stamp")"
        [[ "$have" == "$want" ]] && continue
        say "installing npm packages in $dir (npm ci)"
        # --ignore-scripts: no package here needs its install scripts (botbuilder-dialogs' only
        # tidies duplicate folders with `npx rimraf`, which would fetch rimraf).
        (cd "$ROOT/$dir" && npm_config_yes=true npm ci --ignore-scripts --no-audit --no-fund --loglevel=error) \
            || die "npm ci in $dir failed (see above)"
        printf '%s\n' "$want" >"$ROOT/$dir/node_modules/.setup-stamp"
    done
    say "npm packages ok"
}

main() {
    apt_step
    python_step
    npm_step
}

# Run when executed; only define the functions when sourced (for tests).
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    main "$@"
fi
