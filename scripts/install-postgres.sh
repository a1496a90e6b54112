#!/usr/bin/env bash
# Install the PostgreSQL server binaries the search tests use: Debian's `postgresql`. The tests start
# their own server (127.0.0.1 only, a temporary data dir, stopped at the end); none is started here.
# Idempotent: does nothing when initdb is already there. Uses sudo only when not root.
set -euo pipefail
source "$(dirname "$0")/apt-install.sh"

has_initdb() { compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null 2>&1; }
has_initdb && exit 0
apt_install postgresql
has_initdb || die "package postgresql installed but initdb is missing"
echo "install-postgres.sh: $(ls -d /usr/lib/postgresql/*/bin | head -n 1)" >&2
