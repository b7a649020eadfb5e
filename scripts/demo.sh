#!/bin/bash
# The zapckpt demo: a counter process with a file, checkpointed together, rolled back, forked,
# and its history browsed through the FUSE view.
# Runs on the embedded default (loop-file btrfs pool + SQLite catalog under the state directory).
set -euo pipefail
cd "$(dirname "$0")/.."
ZAP="${ZAP:-.venv/bin/zap}"
WORKLOAD="$PWD/tests/workloads/counter.py"

say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
run() { say "$*"; "$@"; }
last() { tail -n1 "$($ZAP show "$1" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["volume"])')/counter.txt"; }

# Idempotent: leave no earlier demo pods behind.
for p in demo demo-fork web-old web; do "$ZAP" rm --force --yes "$p" >/dev/null 2>&1 || true; done

run "$ZAP" doctor
run "$ZAP" init
# The program goes into the pod's volume, so it is rolled back and branched with its data.
run "$ZAP" create demo --env COUNTER_INTERVAL=0.01 -- python3 counter.py
run cp "$WORKLOAD" "$($ZAP show demo --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["volume"])')/"
run "$ZAP" start demo
sleep 1
echo "counter file now ends at: $(last demo)"
run "$ZAP" checkpoint demo -m "known good"
snap="$($ZAP show demo@1 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["snapshot"]["path"])')"
echo "the checkpoint's snapshot ends at: $(tail -n1 "$snap/counter.txt")  (taken while the process was frozen)"
run "$ZAP" list demo
sleep 2
echo "the pod went on counting: $(last demo)"
run "$ZAP" restore demo@1
sleep 0.5
echo "after the rollback it counts on from the checkpoint: $(last demo)"
run "$ZAP" branch demo@1 demo-fork
sleep 1
echo "original: $(last demo)   fork: $(last demo-fork)   (two live copies of one past state)"
say "# a networked service: its own address, a published port, a branch at another address"
run "$ZAP" create web -p 18088:8000 -- python3 -m http.server 8000
webvol="$($ZAP show web --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["volume"])')"
echo "version 1" > "$webvol/index.html"
run "$ZAP" start web
fetch() { python3 -c 'import sys, time, urllib.request
for _ in range(100):
    try: print(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode().strip()); break
    except OSError: time.sleep(0.05)' "$1"; }
echo "http://127.0.0.1:18088/ says: $(fetch http://127.0.0.1:18088/)"
run "$ZAP" checkpoint web -m "version 1 online"
echo "version 2" > "$webvol/index.html"
run "$ZAP" branch web@1 web-old -p 18089:8000
echo "the original (port 18088) says: $(fetch http://127.0.0.1:18088/)   the branch (port 18089) says: $(fetch http://127.0.0.1:18089/)"
run "$ZAP" ps
run "$ZAP" log demo
run "$ZAP" show demo@1
view="$(mktemp -d /tmp/zap-view.XXXXXX)"
run "$ZAP" mount "$view"
run ls "$view/pods/demo" "$view/pods/demo/checkpoints/1"
echo "checkpoint 1's counter file, read through the view: ends at $(tail -n1 "$view/pods/demo/checkpoints/1/fs/counter.txt")"
run "$ZAP" umount "$view"
rmdir "$view"
say "$ZAP rm --force --yes demo-fork demo web-old web; $ZAP deinit"
for p in demo-fork demo web-old web; do "$ZAP" rm --force --yes "$p"; done
# Leave no mount, loop device or process behind; the next zap command re-mounts the pool by
# itself (and starts the zap server again).
"$ZAP" deinit
"$ZAP" server --stop >/dev/null
echo
echo "demo done. The state stays in ${ZAP_HOME:-/var/lib/zapckpt}; \`zap deinit --purge\` deletes it."
