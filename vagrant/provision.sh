#!/bin/bash
# Vagrant provisioning: the project's own installer (apt packages, CRIU, .venv), plus the NILFS2
# module of the guest's kernel, then a check that the pieces the suite needs are there.
set -euo pipefail
cd /zapckpt
bash scripts/install.sh
modprobe nilfs2
mkfs.nilfs2 -V >/dev/null
zap doctor || true
echo "ready: vagrant ssh -c 'cd /zapckpt && sudo make test'"
