// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
//
// Rauta's XDP program: steer the gateway's own traffic into AF_XDP sockets,
// pass everything else to the kernel untouched.
//
// Steered (XDP_REDIRECT into RAUTA_XSKS[rx_queue_index]), for a dedicated
// gateway address that only the userspace stack holds:
//   - ARP whose target protocol address is the gateway address (requests for
//     it and replies to it);
//   - IPv4 TCP, UDP and ICMP whose destination is the gateway address;
//   - with an IPv6 address (RAUTA_HAS_IPV6): IPv6 TCP, UDP and ICMPv6 to it,
//     and neighbour solicitations whose target it is (sent to its
//     solicited-node group).
// For the node's own address (RAUTA_NODE_ADDRESS), only IPv4 TCP to it whose
// destination port is a listener port (RAUTA_PORTS) or in the stack's
// ephemeral range: ARP, ICMP, SSH, the kubelet and every other port stay
// with the node's kernel.
// Everything else returns XDP_PASS. When no socket is bound at the queue's
// slot, bpf_redirect_map falls back to XDP_PASS (the flags argument), so a
// program left behind by a dead process never blackholes traffic.
//
// Built by xdp-loader/build.rs with `clang -target bpf`; loaded by aya.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/icmpv6.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define RAUTA_MAX_QUEUES 64

#define ARPHRD_ETHER_BE bpf_htons(1)
#define ARP_PLEN_IPV4 4
#define ARP_HLEN_ETHER 6

#define RAUTA_NODE_ADDRESS 1
#define RAUTA_HAS_IPV6 2
#define NDISC_NEIGHBOUR_SOLICITATION 135
#define RAUTA_MAX_PORTS 256

// Keep in sync with `Config` in xdp-loader/src/maps.rs.
struct rauta_config {
	__u32 gateway_addr;    // IPv4, network byte order; 0 = steer nothing
	__u32 flags;           // RAUTA_NODE_ADDRESS: steer only the ports below
	__u16 ephemeral_first; // the stack's ephemeral range, host order
	__u16 ephemeral_last;
	__u32 gateway_addr6[4]; // IPv6, network byte order (RAUTA_HAS_IPV6)
};

// Keep in sync with `QueueCounters` in xdp-loader/src/maps.rs.
struct rauta_counters {
	__u64 redirected;
	__u64 passed;
};

struct arp_ipv4 {
	__be16 htype;
	__be16 ptype;
	__u8 hlen;
	__u8 plen;
	__be16 oper;
	__u8 sha[ARP_HLEN_ETHER];
	__u8 spa[ARP_PLEN_IPV4];
	__u8 tha[ARP_HLEN_ETHER];
	__u8 tpa[ARP_PLEN_IPV4];
} __attribute__((packed));

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, RAUTA_MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} RAUTA_XSKS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct rauta_config);
} RAUTA_CONFIG SEC(".maps");

// Listener ports (host order) steered in node-address mode.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, RAUTA_MAX_PORTS);
	__type(key, __u32);
	__type(value, __u8);
} RAUTA_PORTS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, RAUTA_MAX_QUEUES);
	__type(key, __u32);
	__type(value, struct rauta_counters);
} RAUTA_COUNTERS SEC(".maps");

static __always_inline int pass(struct rauta_counters *c)
{
	if (c)
		c->passed++;
	return XDP_PASS;
}

static __always_inline int is_addr6(const struct in6_addr *a, const struct rauta_config *config)
{
	return a->in6_u.u6_addr32[0] == config->gateway_addr6[0] &&
	       a->in6_u.u6_addr32[1] == config->gateway_addr6[1] &&
	       a->in6_u.u6_addr32[2] == config->gateway_addr6[2] &&
	       a->in6_u.u6_addr32[3] == config->gateway_addr6[3];
}

static __always_inline int is_gateway_tcp_port(struct tcphdr *tcp, void *data_end,
					       const struct rauta_config *config)
{
	if ((void *)(tcp + 1) > data_end)
		return 0;
	__u32 port = bpf_ntohs(tcp->dest);
	if (port >= config->ephemeral_first && port <= config->ephemeral_last)
		return 1;
	return bpf_map_lookup_elem(&RAUTA_PORTS, &port) != 0;
}

// IPv6 for the gateway's address: in node-address mode TCP to its ports;
// on a dedicated address TCP, UDP and ICMPv6 to it, and neighbour
// solicitations for it.
static __always_inline int is_gateway_ipv6(void *data, void *data_end,
					   const struct rauta_config *config)
{
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6 = (void *)(eth + 1);
	if ((void *)(ip6 + 1) > data_end)
		return 0;
	if (config->flags & RAUTA_NODE_ADDRESS) {
		if (ip6->nexthdr != IPPROTO_TCP || !is_addr6(&ip6->daddr, config))
			return 0;
		return is_gateway_tcp_port((void *)(ip6 + 1), data_end, config);
	}
	if (is_addr6(&ip6->daddr, config))
		return ip6->nexthdr == IPPROTO_TCP || ip6->nexthdr == IPPROTO_UDP ||
		       ip6->nexthdr == IPPROTO_ICMPV6;
	if (ip6->nexthdr != IPPROTO_ICMPV6)
		return 0;
	// A solicitation: type, code, checksum, reserved, then the target.
	struct icmp6hdr *icmp = (void *)(ip6 + 1);
	if ((void *)(icmp + 1) > data_end || icmp->icmp6_type != NDISC_NEIGHBOUR_SOLICITATION)
		return 0;
	struct in6_addr *target = (void *)(icmp + 1);
	if ((void *)(target + 1) > data_end)
		return 0;
	return is_addr6(target, config);
}

// TCP to the node's address on a port the gateway owns.
static __always_inline int is_gateway_port(void *data, void *data_end,
					   const struct rauta_config *config)
{
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return 0;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return 0;
	if (ip->daddr != config->gateway_addr || ip->protocol != IPPROTO_TCP)
		return 0;
	// A later fragment carries no ports: the kernel's.
	if (ip->frag_off & bpf_htons(0x1fff))
		return 0;
	__u32 ihl = ip->ihl * 4;
	if (ihl < sizeof(*ip))
		return 0;
	return is_gateway_tcp_port((void *)ip + ihl, data_end, config);
}

static __always_inline int is_gateway_traffic(void *data, void *data_end, __u32 gateway_addr)
{
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return 0;

	if (eth->h_proto == bpf_htons(ETH_P_ARP)) {
		struct arp_ipv4 *arp = (void *)(eth + 1);
		if ((void *)(arp + 1) > data_end)
			return 0;
		if (arp->htype != ARPHRD_ETHER_BE || arp->ptype != bpf_htons(ETH_P_IP) ||
		    arp->hlen != ARP_HLEN_ETHER || arp->plen != ARP_PLEN_IPV4)
			return 0;
		__u32 tpa;
		__builtin_memcpy(&tpa, arp->tpa, sizeof(tpa));
		return tpa == gateway_addr;
	}

	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > data_end)
			return 0;
		if (ip->daddr != gateway_addr)
			return 0;
		return ip->protocol == IPPROTO_TCP || ip->protocol == IPPROTO_UDP ||
		       ip->protocol == IPPROTO_ICMP;
	}

	return 0;
}

SEC("xdp")
int rauta_xdp(struct xdp_md *ctx)
{
	__u32 zero = 0;
	__u32 queue = ctx->rx_queue_index;
	struct rauta_counters *counters = bpf_map_lookup_elem(&RAUTA_COUNTERS, &queue);
	struct rauta_config *config = bpf_map_lookup_elem(&RAUTA_CONFIG, &zero);

	if (!config || config->gateway_addr == 0)
		return pass(counters);

	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return pass(counters);
	int ours;
	if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		ours = (config->flags & RAUTA_HAS_IPV6) && is_gateway_ipv6(data, data_end, config);
	else if (config->flags & RAUTA_NODE_ADDRESS)
		ours = is_gateway_port(data, data_end, config);
	else
		ours = is_gateway_traffic(data, data_end, config->gateway_addr);
	if (!ours)
		return pass(counters);

	int action = bpf_redirect_map(&RAUTA_XSKS, queue, XDP_PASS);
	if (action == XDP_REDIRECT) {
		if (counters)
			counters->redirected++;
		return action;
	}
	return pass(counters);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
