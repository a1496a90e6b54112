#!/usr/bin/env bash
# Install the headless browser the browser tests drive: Debian's `chromium` (/usr/bin/chromium).
# Idempotent: does nothing when /usr/bin/chromium is already there. Uses sudo only when not root.
# Playwright drives this binary (executable_path); `playwright install` is never used.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
    exit 0
fi

die() { echo "install-browser.sh: $*" >&2; exit 1; }

command -v apt-get >/dev/null 2>&1 \
    || die "$CHROMIUM is missing and apt-get is not available: install Chromium by hand (Debian package 'chromium')."

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    die "$CHROMIUM is missing; installing it needs root (run as root, or with passwordless sudo): apt-get install chromium"
fi

echo "install-browser.sh: installing Debian package chromium ..." >&2
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq >/dev/null \
    || die "apt-get update failed"
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null \
    || die "apt-get install chromium failed"

[ -x "$CHROMIUM" ] || die "package chromium installed but $CHROMIUM is still missing"
echo "install-browser.sh: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")" >&2
