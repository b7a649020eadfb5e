#!/bin/bash
# zapckpt installer: Debian packages, CRIU >= 4, Python venv, /usr/local/bin/zap.
# Idempotent: every step checks first and only acts when something is missing. It prints one
# line per step (what it checked or installed, and how long it took); the full apt, debootstrap
# and pip output goes to a log file it names.
#
#   bash scripts/install.sh            what running zap needs (`make install`, `make demo`)
#   bash scripts/install.sh --test     also what the tests and benchmarks use: the real services
#                                      (Redis, nginx, MariaDB), the VM suite's qemu and NILFS2
#                                      tools, pytest, hypothesis, matplotlib (`make test`)
#
# Environment overrides:
#   ZAP_DEBIAN_MIRROR  mirror URL for debootstrap (default: taken from apt config)
#   ZAP_CRIU_SUITE     Debian suite providing a CRIU that passes the probe (default: testing,
#                      built with debootstrap's sid script: bookworm's debootstrap has none for it)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ZAP_PREFIX=/opt/zapckpt
CRIU_ROOT="$ZAP_PREFIX/criu-root"
CRIU_WRAPPER="$ZAP_PREFIX/bin/criu"
CRIU_SUITE="${ZAP_CRIU_SUITE:-testing}"
VENV="$REPO/.venv"
STAMP="$VENV/.zap-installed"
ZAP_LINK=/usr/local/bin/zap
LOG_DIR=/var/log/zapckpt
LOG="$LOG_DIR/install.log"

FOR_TESTS=0
case "${1:-}" in
    "") ;;
    --test) FOR_TESTS=1 ;;
    *) echo "usage: bash scripts/install.sh [--test]" >&2; exit 2 ;;
esac

# What zap itself needs (pyfuse3 is built from source: the compiler and FUSE headers).
APT_PACKAGES=(btrfs-progs fuse3 libfuse3-dev pkg-config util-linux mount debootstrap
              zstd libzstd-dev procps e2fsprogs python3 python3-venv python3-dev gcc make iproute2 nftables groff-base
              catatonit)
EXTRAS=""
if [[ $FOR_TESTS -eq 1 ]]; then
    APT_PACKAGES+=(rsync
                   # real services the tests run inside pods
                   redis-server nginx mariadb-server-core mariadb-client-core haproxy
                   # the fleet's shared catalog: the tests run a private PostgreSQL 15 cluster
                   postgresql
                   # the VM suite (vagrant/run-vm-tests): qemu, the guest's initramfs tools, NILFS2
                   # tools, and Debian's own CRIU, which the Debian 12 guest uses
                   qemu-system-x86 busybox-static cpio kmod nilfs-tools criu)
    EXTRAS="[test,bench]"
fi

step_start=$SECONDS
log()  { echo "[install] $*"; }
# One line for a finished step, with its time.
done_step() { echo "[install] $1 ($((SECONDS - step_start)) s)"; step_start=$SECONDS; }
warn() { echo "[install] WARNING: $*" >&2; }
die()  {
    echo "[install] ERROR: $*" >&2
    if [[ -s "$LOG" ]]; then
        echo "[install] the last lines of $LOG:" >&2
        tail -n 15 "$LOG" | sed 's/^/    /' >&2
    fi
    exit 1
}
# Run a command with its output in the log only.
logged() {
    { echo; echo "### $(date -u +%FT%TZ) $*"; } >>"$LOG"
    "$@" >>"$LOG" 2>&1
}


[[ "$(id -u)" -eq 0 ]] || die "must be run as root (try: sudo bash $0)"
mkdir -p "$LOG_DIR"
chmod 0700 "$LOG_DIR"
: >"$LOG"
log "full output of this run: $LOG"

# ---------------------------------------------------------------- a. apt
apt_updated=0
apt_install() {
    if [[ $apt_updated -eq 0 ]]; then
        logged apt-get update || die "apt-get update failed"
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive logged apt-get install -y --no-install-recommends "$@" \
        || die "apt-get install failed"
}

missing=()
for p in "${APT_PACKAGES[@]}"; do
    st="$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)"
    [[ "$st" == "install ok installed" ]] || missing+=("$p")
done
if [[ ${#missing[@]} -eq 0 ]]; then
    done_step "apt packages: ok (all ${#APT_PACKAGES[@]} already installed)"
else
    log "apt packages: installing ${#missing[@]}: ${missing[*]}"
    apt_install "${missing[@]}"
    done_step "apt packages: ok (installed ${#missing[@]})"
fi

# ---------------------------------------------------------------- b. criu
# `criu check` passes for CRIUs that cannot dump a single inet socket on this kernel (4.1 on
# Linux >= 6.16), so a CRIU is judged by the functional probe (zapckpt/criu/probe.py): a tiny
# pod with TCP, UDP and unix sockets in its own netns is dumped, restored and must go on.
criu_major() {
    "$1" --version 2>/dev/null | sed -n 's/^Version: *\([0-9][0-9]*\)\..*/\1/p' | head -n1
}
PROBE_OUT=""
criu_works() {
    PROBE_OUT="$(cd "$REPO" && PYTHONPATH="$REPO" python3 -m zapckpt.criu.probe --criu "$1" 2>&1)"
}

system_criu_ok() {
    local c major
    c="$(command -v criu 2>/dev/null)" || return 1
    [[ "$c" == "$CRIU_WRAPPER" ]] && return 1
    major="$(criu_major "$c")"
    [[ -n "$major" && "$major" -ge 4 ]] || return 1
    criu_works "$c" || return 1
    SYSTEM_CRIU="$c"
}

# Debian mirror for debootstrap, derived from this machine's apt configuration.
find_mirror() {
    if [[ -n "${ZAP_DEBIAN_MIRROR:-}" ]]; then
        echo "$ZAP_DEBIAN_MIRROR"; return 0
    fi
    local suite="" f uri
    if [[ -r /etc/os-release ]]; then
        suite="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
    fi
    [[ -n "$suite" ]] || suite="$(lsb_release -sc 2>/dev/null || true)"
    if [[ -n "$suite" ]]; then
        shopt -s nullglob
        for f in /etc/apt/sources.list.d/*.sources; do
            uri="$(awk -v suite="$suite" '
                function flush() {
                    if (uri != "" && ok && enabled) { print uri; found = 1; exit }
                    uri = ""; ok = 0; enabled = 1
                }
                BEGIN { enabled = 1 }
                /^[ \t]*#/ { next }
                /^[ \t]*$/ { flush(); next }
                tolower($1) == "uris:"    { uri = $2 }
                tolower($1) == "enabled:" { if (tolower($2) == "no") enabled = 0 }
                tolower($1) == "suites:"  { for (i = 2; i <= NF; i++) if ($i == suite) ok = 1 }
                END { if (!found) flush() }
            ' "$f")"
            if [[ "$uri" == http* ]]; then echo "$uri"; return 0; fi
        done
        shopt -u nullglob
    fi
    if [[ -r /etc/apt/sources.list ]]; then
        uri="$(awk '$1 == "deb" {
                    i = 2
                    if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                    if ($i ~ /^https?:\/\//) { print $i; exit }
                }' /etc/apt/sources.list)"
        if [[ -n "$uri" ]]; then echo "$uri"; return 0; fi
    fi
    return 1
}

write_criu_wrapper() {
    mkdir -p "$(dirname "$CRIU_WRAPPER")"
    local tmp="$CRIU_WRAPPER.tmp.$$"
    cat >"$tmp" <<EOF
#!/bin/sh
# CRIU from a private Debian $CRIU_SUITE tree (needs a newer glibc than the host),
# run through that tree's own dynamic loader. Generated by zapckpt scripts/install.sh.
R=$CRIU_ROOT
exec "\$R/lib64/ld-linux-x86-64.so.2" --library-path "\$R/lib/x86_64-linux-gnu:\$R/usr/lib/x86_64-linux-gnu" "\$R/usr/sbin/criu" "\$@"
EOF
    chmod 0755 "$tmp"
    mv -f "$tmp" "$CRIU_WRAPPER"
}

build_criu_root() {
    local mirror tmp="$CRIU_ROOT.tmp" script=""
    mirror="$(find_mirror)" || die "no Debian mirror found in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list; set ZAP_DEBIAN_MIRROR"
    # Releases newer than the host's debootstrap have no script of their own: sid's fits them.
    [[ -e "/usr/share/debootstrap/scripts/$CRIU_SUITE" ]] || script=/usr/share/debootstrap/scripts/sid
    log "criu: building a private $CRIU_SUITE runtime in $CRIU_ROOT (debootstrap from $mirror, ~30 s)"
    mkdir -p "$ZAP_PREFIX"
    rm -rf "$tmp"
    logged debootstrap --variant=minbase --include=criu "$CRIU_SUITE" "$tmp" "$mirror" $script \
        || die "debootstrap of $CRIU_SUITE failed"
    [[ -x "$tmp/usr/sbin/criu" ]] || die "debootstrap finished but $tmp/usr/sbin/criu is missing"
    rm -rf "$CRIU_ROOT"
    mv "$tmp" "$CRIU_ROOT"
}

SYSTEM_CRIU=""
if [[ -x "$CRIU_WRAPPER" ]] && criu_works "$CRIU_WRAPPER"; then
    done_step "criu: ok ($CRIU_WRAPPER $("$CRIU_WRAPPER" --version 2>/dev/null | sed -n 's/^Version: *//p'): $PROBE_OUT)"
elif system_criu_ok; then
    done_step "criu: ok (system $SYSTEM_CRIU: $PROBE_OUT)"
else
    [[ -n "$PROBE_OUT" ]] && log "criu: the installed CRIU fails the probe: $PROBE_OUT"
    build_criu_root
    write_criu_wrapper
    criu_works "$CRIU_WRAPPER" || die "the private CRIU fails the probe too: $PROBE_OUT"
    done_step "criu: ok (installed $CRIU_WRAPPER $("$CRIU_WRAPPER" --version 2>/dev/null | sed -n 's/^Version: *//p'): $PROBE_OUT)"
fi

# ---------------------------------------------------------------- c. venv
[[ -f "$REPO/pyproject.toml" ]] || die "$REPO/pyproject.toml not found"
if [[ -x "$VENV/bin/python" && -x "$VENV/bin/pip" ]] && "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    done_step "venv: ok ($VENV exists)"
else
    rm -rf "$VENV"
    logged python3 -m venv "$VENV" || die "python3 -m venv $VENV failed"
    done_step "venv: ok (created $VENV)"
fi

# A run for the tests installs everything a plain install does, and more: its stamp covers both.
want_for() { (cat "$REPO/pyproject.toml"; echo "extras: $1") | sha256sum | cut -d' ' -f1; }
have="$(cat "$STAMP" 2>/dev/null || true)"
if [[ "$have" == "$(want_for "$EXTRAS")" || ( -z "$EXTRAS" && "$have" == "$(want_for "[test,bench]")" ) ]]; then
    done_step "python deps: ok (pyproject.toml unchanged)"
else
    rm -f "$STAMP"
    (cd "$REPO" && logged "$VENV/bin/pip" --disable-pip-version-check install -e ".$EXTRAS") \
        || die "pip install -e '.$EXTRAS' failed"
    want_for "$EXTRAS" >"$STAMP"
    done_step "python deps: ok (installed zapckpt${EXTRAS:+ with $EXTRAS} into $VENV)"
fi

# Byte-code, written once here: every zap command would compile its modules again otherwise
# wherever PYTHONDONTWRITEBYTECODE is set (~0.1 s a command on a small machine).
"$VENV/bin/python" -m compileall -q -j 0 "$REPO/zapckpt" "$REPO/catalog" "$REPO/fsbackend" >/dev/null \
    || warn "compileall failed: zap works, a little slower to start"

# ---------------------------------------------------------------- c2. the console logger, the page server and the zap command
# Small C programs: the logger runs beside every running pod (zapckpt/pod/logger.c); the page
# server answers CRIU's lazy-pages daemon from the image store (zapckpt/criu/pageserver.c); the
# `zap` command (zapckpt/client.c) hands each command to the zap server, whose Python is warm already.
mkdir -p "$VENV/libexec"
LOGGER="$VENV/libexec/zap-console"
PAGES="$VENV/libexec/zap-pages"
CLIENT="$VENV/libexec/zap"
logged cc -O2 -Wall -o "$PAGES.tmp" "$REPO/zapckpt/criu/pageserver.c" -lzstd || die "cc zapckpt/criu/pageserver.c failed"
mv -f "$PAGES.tmp" "$PAGES"
logged cc -O2 -Wall -o "$LOGGER.tmp" "$REPO/zapckpt/pod/logger.c" || die "cc zapckpt/pod/logger.c failed"
mv -f "$LOGGER.tmp" "$LOGGER"
logged cc -O2 -Wall -DZAP_PYTHON="\"$VENV/bin/python\"" -DZAP_ROOT="\"$(realpath "$REPO")\"" \
    -DZAP_PREFIX="\"$(realpath "$VENV")\"" -o "$CLIENT.tmp" "$REPO/zapckpt/client.c" || die "cc zapckpt/client.c failed"
mv -f "$CLIENT.tmp" "$CLIENT"
done_step "console logger, page server and zap command: ok (built $LOGGER, $PAGES and $CLIENT)"

# ---------------------------------------------------------------- d. zap link
target="$CLIENT"
if [[ -L "$ZAP_LINK" ]]; then
    if [[ "$(readlink "$ZAP_LINK")" == "$target" ]]; then
        done_step "zap link: ok ($ZAP_LINK -> $target)"
    else
        ln -sfn "$target" "$ZAP_LINK"
        done_step "zap link: ok (replaced $ZAP_LINK -> $target)"
    fi
elif [[ -e "$ZAP_LINK" ]]; then
    warn "$ZAP_LINK exists and is not a symlink; leaving it alone"
else
    mkdir -p "$(dirname "$ZAP_LINK")"
    ln -s "$target" "$ZAP_LINK"
    done_step "zap link: ok (created $ZAP_LINK -> $target)"
fi

# ---------------------------------------------------------------- e. completion and manual
# Generated from the parser of this very zap, so they always match it.
mkdir -p /usr/local/share/bash-completion/completions /usr/local/share/man/man1
"$target" completion bash > /usr/local/share/bash-completion/completions/zap
"$target" man > /usr/local/share/man/man1/zap.1
done_step "completion and manual: ok (bash: /usr/local/share/bash-completion/completions/zap; man zap)"

log "done in $SECONDS s"
