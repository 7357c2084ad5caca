#!/bin/sh
# Pin a NIC's interrupts and receive/transmit steering to a CPU set, away from
# the CPUs running corecast shards. See docs/operations.md ("IRQ and RPS pinning").
#
# usage: irq-pin.sh [-n] IFACE IRQ_CPUS [RPS_CPUS]
#   IFACE     network interface (eth0, ens5, ...)
#   IRQ_CPUS  CPU list for the NIC's hardware interrupts, e.g. "0" or "0,4"
#   RPS_CPUS  CPU list for software receive steering (default: IRQ_CPUS)
#   -n        dry run: print what would be written
set -eu

DRY=0
if [ "${1:-}" = "-n" ]; then DRY=1; shift; fi
if [ $# -lt 2 ]; then
    sed -n '2,10p' "$0"; exit 2
fi
IFACE=$1 IRQ_CPUS=$2 RPS_CPUS=${3:-$2}

write() { # write VALUE FILE
    if [ "$DRY" = 1 ]; then echo "echo $1 > $2"; else echo "$1" > "$2"; fi
}

# CPU list ("0-2,5") -> hex mask ("27") for the rps_cpus / xps_cpus files
# (CPUs below 64; comma-separated 32-bit groups would be needed beyond that).
mask() {
    echo "$1" | awk -F, '{
        m = 0
        for (i = 1; i <= NF; i++) {
            n = split($i, r, "-"); a = r[1]; b = (n > 1) ? r[2] : r[1]
            for (c = a; c <= b; c++) m += 2 ^ c
        }
        printf "%x\n", m
    }'
}

[ -d "/sys/class/net/$IFACE" ] || { echo "no interface $IFACE" >&2; exit 1; }

# irqbalance would move the interrupts back.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet irqbalance 2>/dev/null; then
    if [ "$DRY" = 1 ]; then echo "systemctl stop irqbalance"; else systemctl stop irqbalance; fi
fi

# 1. Hardware interrupts of the interface's queues (MSI-X vectors named after it).
found=0
for irq in $(awk -v ifc="$IFACE" '$0 ~ ifc { sub(":", "", $1); print $1 }' /proc/interrupts); do
    write "$IRQ_CPUS" "/proc/irq/$irq/smp_affinity_list"
    found=1
done
[ "$found" = 1 ] || echo "note: no IRQ named after $IFACE in /proc/interrupts (virtual NIC?)" >&2

# 2. RPS/RFS: which CPUs run the protocol stack for received packets.
RPS_MASK=$(mask "$RPS_CPUS")
for q in /sys/class/net/"$IFACE"/queues/rx-*; do
    [ -d "$q" ] || continue
    write "$RPS_MASK" "$q/rps_cpus"
    write 4096 "$q/rps_flow_cnt"
done

# 3. XPS: transmit queue per CPU set, so sends from a shard stay on its queue.
for q in /sys/class/net/"$IFACE"/queues/tx-*; do
    [ -d "$q" ] || continue
    [ -w "$q/xps_cpus" ] || continue
    write "$RPS_MASK" "$q/xps_cpus"
done
echo "done: $IFACE irqs -> $IRQ_CPUS, rps/xps -> $RPS_CPUS"
