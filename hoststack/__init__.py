"""The built-in sans-I/O host network stack: endpoint (ARP/IP/ICMP), TCP, traffic and books."""
