#!/usr/bin/env bash
# Install the headless browser the browser tests drive: Debian's `chromium` (/usr/bin/chromium).
# Idempotent: does nothing when /usr/bin/chromium is already there. Uses sudo only when not root.
# Playwright drives this binary (executable_path); `playwright install` is never used.
set -euo pipefail
source "$(dirname "$0")/apt-install.sh"

CHROMIUM=/usr/bin/chromium
[ -x "$CHROMIUM" ] && exit 0
apt_install chromium
[ -x "$CHROMIUM" ] || die "package chromium installed but $CHROMIUM is still missing"
echo "install-browser.sh: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")" >&2
