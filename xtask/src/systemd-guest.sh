#!/bin/bash
# The `cargo xtask test-systemd` guest's test, run by refusal-guest-test.service once systemd
# (PID 1) reached multi-user.target. Installs the package as an operator would, drives the
# service through restarts, a SIGKILL, an upgrade, removal and purge, with refused connects in
# between, and prints what it saw as `@@ ` lines on the console for the host to judge. Counts on
# the refused port only grow: the host demands the running sum of what vm-client made.
set -u
lib=/usr/local/lib/refusal-guest
port=7001
say() { echo "@@ $*"; }
prefixed() { sed "s/^/@@ $1 /"; }
stamp() { say time "$1" "$(cut -d' ' -f1 /proc/uptime)"; }
main_pid() { systemctl show -p MainPID --value refusal-agent; }
ready() {
    for _ in $(seq 300); do
        curl -sf -o /dev/null http://127.0.0.1:9977/readyz && return 0
        sleep 0.2
    done
    return 1
}
# The agent's series on the refused port, and who is serving them.
scrape() {
    say ready "$1" "$(ready && echo 1 || echo 0)"
    say pid "$1" "$(main_pid)"
    curl -s http://127.0.0.1:9977/metrics |
        grep -E "^refusal_agent_build_info|^refusal_connect_failures_total.*dst_port=\"$port\"" |
        prefixed "metrics $1"
}
refuse() { say client "$1" "$(vm-client refused 127.0.0.1 $port "$2" 2>&1)"; }
# Every BPF program, map and link in the kernel (systemd loads its own: compared before/after).
bpf() {
    say bpf "$1" "$(bpftool prog list | grep -c '^[0-9]*:')" "$(bpftool map list | grep -c '^[0-9]*:')" \
        "$(bpftool link list | grep -c '^[0-9]*:')"
    bpftool prog list | grep '^[0-9]*:' | prefixed "prog $1"
    say pins "$1" "$(ls -A /sys/fs/bpf | tr '\n' ' ')"
}

say kernel "$(uname -r)"
stamp boot
# sock_diag (inbound diagnoses), from the kernel package unpacked on the host: no modules tree.
for m in inet_diag tcp_diag; do
    insmod "$lib/modules/$m.ko"
done
bpf before

apt-get install -y -q "$lib"/refusal-agent_*-1_amd64.deb > /tmp/apt.log 2>&1
say install "$?"
prefixed apt < /tmp/apt.log
say enabled "$(systemctl is-enabled refusal-agent)"
stamp installed
# Installed means started, not yet attached: counting begins once it is ready.
ready
refuse install 100
scrape install
journal() { journalctl -u refusal-agent --no-pager -o short-monotonic | tail -n 60 | prefixed journal-log; }
if ! ready; then
    journal
    exit 1
fi
pid=$(main_pid)
grep -E '^(Uid|Gid|Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs):' /proc/"$pid"/status | tr '\t' ' ' | prefixed status
say user "$(stat -c %U /proc/"$pid")"
systemd-analyze security --no-pager refusal-agent.service 2>&1 | prefixed security
systemd-analyze verify /usr/lib/systemd/system/refusal-agent.service > /tmp/verify 2>&1
say verify "$?"
prefixed verify-log < /tmp/verify

# Refusals go on while systemd restarts the service.
stamp restart
vm-client refused 127.0.0.1 $port 300 > /tmp/client 2>&1 &
sleep 0.2
systemctl restart refusal-agent
say restart "$?"
wait
say client restart "$(cat /tmp/client)"
scrape restart

# SIGKILL: Restart=on-failure brings it back after RestartSec; the pinned programs count meanwhile.
stamp sigkill
pid=$(main_pid)
kill -KILL "$pid"
refuse sigkill 200
for _ in $(seq 300); do
    now=$(main_pid)
    [ "$now" != 0 ] && [ "$now" != "$pid" ] && break
    sleep 0.1
done
say restarts "$(systemctl show -p NRestarts --value refusal-agent)"
scrape sigkill

journalctl -u refusal-agent --no-pager -o cat > /tmp/journal 2>&1
say journal "$(grep -c 'hook attached' /tmp/journal)" "$(grep -c 'pinned; counting continues' /tmp/journal)"
journal

# An upgrade: the same version, a newer Debian revision, installed over the running one.
stamp upgrade
refuse upgrade 100
apt-get install -y -q "$lib"/refusal-agent_*-2_amd64.deb > /tmp/apt.log 2>&1
say upgrade "$?"
prefixed apt < /tmp/apt.log
say version "$(dpkg-query -W -f='${Version}' refusal-agent)"
scrape upgrade

stamp remove
apt-get remove -y -q refusal-agent > /tmp/apt.log 2>&1
say remove "$?"
prefixed apt < /tmp/apt.log
say active remove "$(systemctl is-active refusal-agent)"
bpf remove
say etc remove "$(ls -A /etc/refusal-agent 2>&1 | tr '\n' ' ')"
apt-get purge -y -q refusal-agent > /tmp/apt.log 2>&1
say purge "$?"
say etc purge "$(ls -A /etc/refusal-agent 2>&1 | tr '\n' ' ')"
say dpkg purge "$(dpkg-query -W -f='${db:Status-Status}' refusal-agent 2>&1)"
bpf purge
stamp done
say done
