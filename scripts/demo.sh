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
for p in demo demo-fork; do "$ZAP" rm --force "$p" >/dev/null 2>&1 || true; done

run "$ZAP" doctor
run "$ZAP" init
run "$ZAP" run demo --env COUNTER_INTERVAL=0.01 -- python3 "$WORKLOAD"
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
run "$ZAP" ps
run "$ZAP" log demo
run "$ZAP" show demo@1
view="$(mktemp -d /tmp/zap-view.XXXXXX)"
run "$ZAP" mount "$view"
run ls "$view/pods/demo" "$view/pods/demo/checkpoints/1"
echo "checkpoint 1's counter file, read through the view: ends at $(tail -n1 "$view/pods/demo/checkpoints/1/fs/counter.txt")"
run "$ZAP" umount "$view"
rmdir "$view"
say "$ZAP rm --force demo-fork; $ZAP rm --force demo; $ZAP deinit"
"$ZAP" rm --force demo-fork
"$ZAP" rm --force demo
# Leave no mount or loop device behind; the next zap command re-mounts the pool by itself.
"$ZAP" deinit
echo
echo "demo done. The state stays in ${ZAP_HOME:-/var/lib/zapckpt}; \`zap deinit --purge\` deletes it."
