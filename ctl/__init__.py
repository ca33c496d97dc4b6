"""The nicteam operator tools: the control client and, later, the `nicteam` CLI."""
