"""Pod networking: each pod's own network namespace (`--net pod|none|host`), the host bridge
and the one nftables table zap owns (outbound NAT, published ports), and what happens to
TCP connections when a pod is checkpointed, restored or branched."""
