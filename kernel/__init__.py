"""The kernel's side of a netns VM: persistent TAP devices and the network namespaces they sit in.

Ground floor: imports only `wire` (and the stdlib). `tap` opens and moves frames through TAP fds;
`netns` drives iproute2's `ip` to make, configure, populate and remove namespaces.
"""
