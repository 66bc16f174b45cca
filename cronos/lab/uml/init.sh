#!/bin/busybox sh
# /init of the Cron-OS User-Mode Linux guest (cronos/lab/uml.py packs it into
# the cached initramfs with Debian's static busybox). Settings come from the
# kernel command line: cronos_dev=, cronos_ip=, cronos_sysctl=k=v,k=v;
# cronos_probe=1 only proves that the kernel boots and reaches init.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
arg() {
    for w in $(cat /proc/cmdline); do
        case "$w" in "$1="*) echo "${w#*=}" ;; esac
    done
}
if [ "$(arg cronos_probe)" = 1 ]; then
    echo CRONOS-UML-PROBE-OK
    poweroff -f
fi
for kv in $(arg cronos_sysctl | tr , ' '); do
    sysctl -w "$kv" >/dev/null || echo "CRONOS-UML-FAIL sysctl $kv"
done
dev=$(arg cronos_dev)
ip6=$(arg cronos_ip6)
if [ -n "$ip6" ]; then  # IPv6 is a module in Debian's UML; no DAD: usable at once
    for m in /lib/*.ko; do insmod "$m" || echo "CRONOS-UML-FAIL module $m"; done
    for c in all default "$dev"; do
        sysctl -w "net.ipv6.conf.$c.accept_dad=0" >/dev/null
        sysctl -w "net.ipv6.conf.$c.accept_ra=0" >/dev/null
    done
fi
ip link set lo up
ip link set "$dev" up || echo "CRONOS-UML-FAIL no device $dev"
ip addr add "$(arg cronos_ip)" dev "$dev" || echo "CRONOS-UML-FAIL address"
if [ -n "$ip6" ]; then
    ip -6 addr add "$ip6" dev "$dev" || echo "CRONOS-UML-FAIL address $ip6"
fi
# one process per connection (nc -ll forks, then execs the handler on the socket)
nc -ll -p 80 -e /bin/cronos-http &
nc -ll -p 1234 -e /bin/cronos-drain &
echo "CRONOS-UML-READY $(uname -r) synack_retries=$(sysctl -n net.ipv4.tcp_synack_retries)" \
    "orphan_retries=$(sysctl -n net.ipv4.tcp_orphan_retries)"
while :; do sleep 3600; done
