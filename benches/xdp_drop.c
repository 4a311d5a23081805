// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
// The lab's physical limit for the packet-rate benchmark: drop every frame
// at the earliest point. Built and attached by benches/packet_rate.rs.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int xdp_drop_all(struct xdp_md *ctx)
{
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
