#!/bin/sh
# pid 1 of the test guest (see run-vm-tests): the host's root is / here, read-only; make the
# writable and virtual file systems a test run needs, run pytest, report its exit code through
# the job share, and power off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
project=$(cat /run/zapvm/project)
# A fresh /tmp, but a checkout that lives under the host's /tmp (CI clones there) stays visible
# at its own path: the .venv's editable install names it.
case "$project" in
    /tmp/*) mkdir -p /run/zapvm-project && mount --bind "$project" /run/zapvm-project ;;
esac
mount -t tmpfs -o mode=1777 tmpfs /tmp
case "$project" in
    /tmp/*) mkdir -p "$project" && mount --bind /run/zapvm-project "$project" ;;
esac
mount -t tmpfs tmpfs /var/tmp
mount -t tmpfs tmpfs /var/lib
mount -t tmpfs tmpfs /var/cache
mount -t tmpfs tmpfs /var/log
mount -t cgroup2 none /sys/fs/cgroup 2>/dev/null
hostname zapvm
ip link set lo up  # CRIU probes TCP repair over loopback
cd "$project" || { echo 99 > /run/zapvm/rc; echo o > /proc/sysrq-trigger; }
echo "zap-vm: kernel $(uname -r), criu $(criu --version | head -1)"
# Debian's CRIU (3.17) for this kernel, not the private 4.x runtime the host needs.
export ZAP_CRIU=/usr/sbin/criu ZAP_IN_VM=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp
set -- $(cat /run/zapvm/args)
"$project/.venv/bin/python" -m pytest -p no:cacheprovider --color=no -q "$@"
echo $? > /run/zapvm/rc
sync
echo o > /proc/sysrq-trigger
while :; do :; done  # pid 1 must not exit: the power-off above is asynchronous (and 9p is gone)
