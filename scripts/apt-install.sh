#!/usr/bin/env bash
# Shared by the install-*.sh scripts: `source` it, then `apt_install PACKAGE...`.
# Installs Debian packages as root, or through passwordless sudo; anything else is one clear error.

die() { echo "$(basename "$0"): $*" >&2; exit 1; }

apt_install() {
    command -v apt-get >/dev/null 2>&1 \
        || die "missing: $*; apt-get is not available, install it by hand (Debian package(s): $*)"
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo=(sudo -n)
        else
            die "missing: $*; installing needs root (run as root, or with passwordless sudo): apt-get install $*"
        fi
    fi
    echo "$(basename "$0"): installing Debian package(s) $* ..." >&2
    "${sudo[@]}" apt-get update -qq >/dev/null || die "apt-get update failed"
    # policy-rc.d 101: a package must not start a service of its own (tests start what they need)
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee /usr/sbin/policy-rc.d >/dev/null
    "${sudo[@]}" chmod +x /usr/sbin/policy-rc.d
    local rc=0
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null || rc=$?
    "${sudo[@]}" rm -f /usr/sbin/policy-rc.d
    [ "$rc" -eq 0 ] || die "apt-get install $* failed"
}
