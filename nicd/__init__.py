"""nicteam smart NIC: the card supervisor, the NIC OS worker and its sans-I/O datapath."""
