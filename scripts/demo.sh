#!/usr/bin/env bash
# The README's first command: set up the host, build and install moat and its guest, then
# run the main job.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-host.sh
bash scripts/build-guest.sh
moat boot
