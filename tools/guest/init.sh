#!/bin/busybox sh
# PID 1 of the throwaway guest: mount the host's / read-only over 9p with a tmpfs overlay on top,
# bring in the project (read-write) and the fetched kernel's modules, then run the requested
# script chrooted into that root and power off. The exit code goes back through the run dir.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
stty -F /dev/console -onlcr 2>/dev/null
for m in $(cat /modules/order); do insmod /modules/$m.ko 2>/dev/null; done

arg() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" /proc/cmdline; }
project=$(arg ublkdm.project)
rundir=$(arg ublkdm.rundir)
kver=$(arg ublkdm.kver)
kmods=$(arg ublkdm.kmods)

die() { echo "guest init: $*" >&2; poweroff -f; }
mkdir -p /host /rw /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288,cache=loose,ro hostroot /host || die "cannot mount host root"
mount -t tmpfs -o size=80% tmpfs /rw || die "cannot mount tmpfs"
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work /newroot || die "cannot mount overlay"
mkdir -p /newroot/usr/lib/modules/$kver
mount --bind /newroot$kmods /newroot/usr/lib/modules/$kver || die "cannot bind modules"
mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mount -t devtmpfs devtmpfs /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs tmpfs /newroot/dev/shm
mount -t tmpfs -o size=75% tmpfs /newroot/tmp
mount -t tmpfs -o mode=755 tmpfs /newroot/run
# The project goes last: it may live under a directory just covered (a clone in /tmp).
mkdir -p /newroot$project
mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288,cache=loose project /newroot$project || die "cannot mount project"
ln -sf /proc/self/fd /newroot/dev/fd
ln -sf /proc/self/fd/0 /newroot/dev/stdin
ln -sf /proc/self/fd/1 /newroot/dev/stdout
ln -sf /proc/self/fd/2 /newroot/dev/stderr
hostname ublk-dm-guest

# Booted: from here on a failure is the command's, and the host must not run it again.
: > /newroot$rundir/started
sync -f /newroot$rundir/started
chroot /newroot /bin/bash $rundir/run.sh </dev/console >/dev/console 2>&1
echo $? > /newroot$rundir/rc
# The exit code first, on the project's filesystem alone: a global sync can hang for good on a
# block device whose I/O never completes (a ublk device the kernel never quiesced), and the host
# must still learn how the run ended.
sync -f /newroot$rundir/rc
sync & syncer=$!
for _ in $(seq 1 30); do kill -0 $syncer 2>/dev/null || break; sleep 1; done
poweroff -f
