"""hostd: the per-host daemon — VM endpoints and their traffic, the FPAG, failover."""
