"""The nicteam bus: one message codec, ZeroMQ endpoints, heartbeats, fault injection."""
