"""The NIC datapath, sans-I/O: pure classes fed frames, time and config that return decisions."""
