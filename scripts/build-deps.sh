#!/usr/bin/env bash
# The system libraries the build with `--features loadgen` needs beyond Rust: pkg-config and
# fontconfig's headers, for the load generator's PNG plots (plotters draws its text with
# font-kit). Installed with apt-get where missing, so a fresh machine builds as this one does.
# The service itself (`--bin contoso`, the Docker image) needs neither.
set -euo pipefail
if ! pkg-config --exists fontconfig 2>/dev/null; then
    echo "build-deps: installing pkg-config and libfontconfig1-dev" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pkg-config libfontconfig1-dev >&2
fi
