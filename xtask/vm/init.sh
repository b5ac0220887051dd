#!/bin/busybox sh
# /init of the QEMU guests of `cargo xtask vm-test` (xtask/src/vm.rs).
#
# The initramfs holds a static busybox, this script, the static twmon, the
# static kernel test binaries and the list of tests to run
# (/twmon/tests.list: "BINARY TEST..." per line), and the sock_diag modules
# of the booted kernel. The kernel hands `TWMON_TEST_MODE=...` from its
# command line to us as an environment variable.
#
# Everything goes to the serial console (ttyS0, a log file on the host);
# lines starting with "TWMON-VM " are read by vm.rs. The result leaves the
# guest through QEMU's isa-debug-exit device (/twmon/debug-exit N: QEMU
# exits with N*2+1), so a guest that dies before the end is never mistaken
# for one that passed.

/bin/busybox --install -s /bin
export PATH=/bin
export HOME=/root
mkdir -p /proc /sys /dev /tmp /root /run
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t cgroup2 cgroup2 /sys/fs/cgroup
ip link set lo up

fail() {
	echo "TWMON-VM ERROR $*"
	echo "TWMON-VM EXIT 2"
	/twmon/debug-exit 2
	poweroff -f
}

# sock_diag is built as modules in Debian's kernels; twmon's snapshots and
# the tests' socket checks need it. No modprobe here: load them in order.
for m in inet_diag tcp_diag udp_diag; do
	[ -e /lib/modules/$m.ko ] || continue
	insmod /lib/modules/$m.ko || fail "insmod $m failed"
done

# A skipped kernel test fails under CI=true: here nothing may be skipped.
export CI=true
export RUST_BACKTRACE=1
export TWMON_BIN=/twmon/twmon
mode=${TWMON_TEST_MODE:-tracepoint}
export TWMON_TEST_MODE=$mode
# Software emulation: stretch the tests' waits (support::time_scale).
export TWMON_TEST_TIME_SCALE=4

echo "TWMON-VM KERNEL $(uname -r) MODE $mode CPUS $(nproc) MEM $(awk '/MemTotal/ {print $2}' /proc/meminfo) kB UPTIME $(cut -d' ' -f1 /proc/uptime)"
[ -e /sys/kernel/btf/vmlinux ] || fail "no /sys/kernel/btf/vmlinux"

# What twmon itself says about this kernel in this mode (its readiness line
# names the mode and hooks; notes say what is degraded).
/twmon/twmon watch --mode "$mode" --json --duration 1 --port 1 >/tmp/probe.out 2>/tmp/probe.err
probe_rc=$?
sed 's/^/TWMON-VM TWMON /' /tmp/probe.err
echo "TWMON-VM PROBE rc=$probe_rc"

# TWMON_TEST_REPEAT (vm-test --repeat): rounds of the whole list, until
# one fails.
rounds=${TWMON_TEST_REPEAT:-1}
round=1
tests_from=$(cut -d' ' -f1 /proc/uptime)
rc=0
while [ $rc -eq 0 ] && [ "$round" -le "$rounds" ]; do
	[ "$rounds" -gt 1 ] && echo "TWMON-VM ROUND $round of $rounds"
	while read -r bin tests; do
		case "$bin" in '' | '#'*) continue ;; esac
		echo "TWMON-VM RUN $bin $tests"
		start=$(cut -d' ' -f1 /proc/uptime)
		# shellcheck disable=SC2086 # the test names are separate words
		/twmon/tests/$bin --test-threads=1 --exact $tests
		r=$?
		end=$(cut -d' ' -f1 /proc/uptime)
		echo "TWMON-VM DONE $bin rc=$r start=$start end=$end"
		[ $r -eq 0 ] || rc=1
	done </twmon/tests.list
	round=$((round + 1))
done

# A failure's log ends with what the kernel said while the tests ran (the
# console shows only warnings and worse: loglevel=4).
if [ $rc -ne 0 ]; then
	dmesg | awk -v t="$tests_from" '{ s = $0; sub(/^\[ */, "", s); if (s + 0 >= t) print "TWMON-VM DMESG " $0 }' | tail -n 200
fi

echo "TWMON-VM EXIT $rc"
/twmon/debug-exit $rc
# Not reached with the isa-debug-exit device; QEMU then exits 0 on poweroff,
# which vm.rs reports as "no status".
poweroff -f
