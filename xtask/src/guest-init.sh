#!/bin/busybox sh
# /init of the `cargo xtask test-kernels` guest. Runs `check`, then for each attach mode named on
# the kernel command line (ra.modes=a,b,…) `check --attach`, and `run --attach` and
# `trace --attach` side by side while vm-client makes traffic with known counts, all three with
# the opt-in `--connect-sync` so that hook is proven too (the first `check` shows the default). Prints
# everything as `@@ ` lines on the console for the host to judge; trace events are counted here
# by kind and port (or reason). Run n uses ports 7000 + 100 n + 1…10: runs cannot see each other.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t tracefs nodev /sys/kernel/tracing
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
# A memory-limited cgroup for the listener the OOM killer takes.
echo +memory > /sys/fs/cgroup/cgroup.subtree_control
mkdir /sys/fs/cgroup/oom
echo 32M > /sys/fs/cgroup/oom/memory.max
echo 0 > /sys/fs/cgroup/oom/memory.swap.max 2> /dev/null
# Kernel messages would interleave with the results.
echo 0 > /proc/sys/kernel/printk
# Per-program run counts in /metrics prove which programs ran.
echo 1 > /proc/sys/kernel/bpf_stats_enabled
# sock_diag, for the inbound diagnosis (the kernel would load these on demand from disk).
for m in inet_diag tcp_diag; do
    [ -e /modules/$m.ko.xz ] && unxz /modules/$m.ko.xz
    insmod /modules/$m.ko
done
ip link set lo up
# A non-loopback local address: connections to it that only a 127.0.0.1 listener could take.
ip addr add 192.0.2.1/32 dev lo

say() { echo "@@ $*"; }
prefixed() { sed "s/^/@@ $1 /"; }
stamp() { say time "$1" "$(cut -d' ' -f1 /proc/uptime)"; }

say kernel "$(uname -r)"
stamp boot
refusal-agent check > /tmp/check 2>&1
say check-exit $?
prefixed check < /tmp/check

# The host's settings, from the kernel command line (ra.NAME=VALUE): the attach modes and the
# traffic counts it will demand in /metrics.
arg() { sed -n "s/.*ra\.$1=\([a-z0-9_,]*\).*/\1/p" /proc/cmdline; }
modes=$(arg modes | tr , ' ')
refused_v4=$(arg refused_v4)
refused_v6=$(arg refused_v6)
resets=$(arg resets)
elsewhere=$(arg elsewhere)
udp=$(arg udp)
noroute=$(arg noroute)
lost=$(arg lost)
run=0
for mode in $modes; do
    run=$((run + 1))
    p=$((7000 + 100 * run))
    say mode "$mode" "$p"
    stamp check
    refusal-agent check --attach "$mode" --connect-sync > /tmp/check 2>&1
    say check-exit $?
    prefixed check < /tmp/check
    stamp run
    refusal-agent trace --json --attach "$mode" --connect-sync > /tmp/trace 2> /tmp/trace.err &
    tpid=$!
    refusal-agent run --attach "$mode" --connect-sync --listen 127.0.0.1:9977 > /tmp/agent.log 2>&1 &
    pid=$!
    ready=0
    for _ in $(seq 900); do
        if grep -q '^tracing' /tmp/trace.err && wget -q -O /dev/null http://127.0.0.1:9977/readyz 2> /dev/null; then
            ready=1
            break
        fi
        kill -0 $pid 2> /dev/null && kill -0 $tpid 2> /dev/null || break
        sleep 0.1
    done
    say ready $ready
    stamp ready
    if [ $ready = 1 ]; then
        vm-client elsewhere 127.0.0.1 192.0.2.1 $((p + 5)) "$elsewhere" > /tmp/e5 2>&1 &
        e5=$!
        vm-client elsewhere 192.0.2.1 127.0.0.1 $((p + 6)) "$elsewhere" > /tmp/e6 2>&1 &
        e6=$!
        say client "$(vm-client refused 127.0.0.1 $((p + 1)) "$refused_v4" 2>&1)"
        say client "$(vm-client refused ::1 $((p + 2)) "$refused_v6" 2>&1)"
        say client "$(vm-client reset $((p + 3)) "$resets" 2>&1)"
        say client "$(vm-client cold-start $((p + 4)) 2000 2>&1)"
        say client "$(vm-client udp $((p + 7)) "$udp" 2>&1)"
        # No route: the guest has only lo, and this address is not on it.
        say client "$(vm-client noroute 198.51.100.1 $((p + 8)) "$noroute" 2>&1)"
        # Listeners that die: by SIGKILL, and by the OOM killer.
        say client "$(vm-client listen-killed $((p + 9)) "$lost" 2>&1)"
        say client "$(vm-client listen-oom /sys/fs/cgroup/oom $((p + 10)) "$lost" 2>&1)"
        # Verdicts advance on the daemon's 250 ms tick; listeners are listed at most every second.
        sleep 1.5
        say client "$(cat /tmp/e5)"
        say client "$(cat /tmp/e6)"
        wget -q -O - http://127.0.0.1:9977/metrics | prefixed metrics
        kill $e5 $e6 $pid
    fi
    kill -INT $tpid
    wait $pid
    say exit $?
    wait $tpid
    say trace-exit $?
    stamp exit
    sed -n -e 's/.*"kind":"\([a-z_]*\)".*"dst_port":\([0-9]*\).*/\1 \2/p' \
        -e 's/.*"kind":"\([a-z_]*\)".*"local_port":\([0-9]*\).*/\1 \2/p' \
        -e 's/.*"kind":"\(reset_sent\)".*"reason":"\([a-z_]*\)".*/\1 \2/p' /tmp/trace |
        sort | uniq -c | prefixed trace
    prefixed log < /tmp/agent.log
    prefixed log < /tmp/trace.err
done
say done
poweroff -f
