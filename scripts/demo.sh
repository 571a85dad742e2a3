#!/usr/bin/env bash
# The README's first command: set up the host, build and install moat and its guest, then
# run a busybox container in a microVM and print its output.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-host.sh
bash scripts/build-guest.sh

bundle=${MOAT_DEMO_BUNDLE:-/var/tmp/moat-demo-bundle}
rm -rf "$bundle" && mkdir -p "$bundle/rootfs/bin"
cp /bin/busybox "$bundle/rootfs/bin/busybox"
for a in sh echo cat uname hostname head id; do ln -sf busybox "$bundle/rootfs/bin/$a"; done
mkdir -p "$bundle"/rootfs/{proc,sys,dev,tmp,etc}
(cd "$bundle" && moat spec)
python3 - "$bundle/config.json" <<'PY'
import json, sys
p = sys.argv[1]
c = json.load(open(p))
c["process"]["terminal"] = False
c["process"]["args"] = ["sh", "-c",
    "echo \"hello from a moat container on $(hostname)\"; "
    "echo \"guest kernel: $(uname -r)\"; head -n 1 /proc/meminfo; id"]
json.dump(c, open(p, "w"), indent=2)
PY
echo "host kernel: $(uname -r)"
moat check || true
moat run --bundle "$bundle" "demo-$$"
