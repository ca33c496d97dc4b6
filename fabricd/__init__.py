"""fabricd: the physical network — a learning ToR switch joining all uplinks, and external peers."""
