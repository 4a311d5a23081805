#!/usr/bin/env bash
# The packet-rate benchmark's traffic from the kernel's pktgen, for kernels
# that have it (CONFIG_NET_PKTGEN; this lab's kernel does not, so
# benches/packet_rate.rs uses trafgen). Sends COUNT 60-byte ICMP echo
# requests from the client namespace to the gateway address; compare the
# probe's "frames_out" or the client veth's rx_packets before and after.
#
#   sudo benches/pktgen.sh [PREFIX] [COUNT]     (lab from `rauta lab up --queues 1`)
set -euo pipefail
prefix=${1:-rauta}
count=${2:-2000000}
ns=$prefix-client
dev=$prefix-cl
gw_mac=$(ip netns exec "$prefix-gw" cat "/sys/class/net/$prefix-gw/address")

modprobe pktgen
pg() { echo "$2" > "/proc/net/pktgen/$1"; }
ip netns exec "$ns" bash -c "
  set -e
  pg() { echo \"\$2\" > /proc/net/pktgen/\$1; }
  pg kpktgend_0 'rem_device_all'
  pg kpktgend_0 'add_device $dev'
  pg $dev 'count $count'
  pg $dev 'pkt_size 60'
  pg $dev 'delay 0'
  pg $dev 'dst 198.18.0.1'
  pg $dev 'src_min 198.18.0.10'
  pg $dev 'src_max 198.18.0.10'
  pg $dev 'dst_mac $gw_mac'
  pg $dev 'flag NO_TIMESTAMP'
  pg pgctrl 'start'
  cat /proc/net/pktgen/$dev | tail -3
"
