"""Frames on the wire: the untrusted parser, the builders, MAC helpers and protocol names."""
