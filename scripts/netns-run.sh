#!/usr/bin/env bash
# Run a command inside a fresh network namespace whose only interface is `lo` (brought up).
# Why: Ray registers its node on the machine's non-loopback address even when told 127.0.0.1, and
# tests may send traffic to 127.0.0.1 only; with no other interface, everything Ray does is loopback.
# `unshare --net` needs root (CAP_SYS_ADMIN). Without it the command is skipped with a message,
# except under CI=true, where the Ray tests must run: then it is an error. NETNS_OPTIONAL=1 (the
# benchmark) runs the command in this namespace instead.
set -euo pipefail
source "$(dirname "$0")/apt-install.sh"

if ! unshare --net true 2>/dev/null; then
    [ "${NETNS_OPTIONAL:-}" = "1" ] && exec "$@"
    [ "${CI:-}" = "true" ] && die "cannot create a network namespace (unshare --net needs root); the Ray tests need one"
    echo "$(basename "$0"): cannot create a network namespace (unshare --net needs root): skipped: $*" >&2
    exit 0
fi
command -v ip >/dev/null 2>&1 || apt_install iproute2
# Ray's token auth would write a token under ~/.ray; nothing leaves this namespace, so it is off here
exec env RAY_AUTH_MODE=disabled unshare --net -- bash -c 'ip link set lo up && exec "$@"' netns-run "$@"
