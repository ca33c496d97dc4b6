"""`python -m ctl`: the same commands as `nicteam`."""

from ctl.cli import main

main(prog_name="nicteam")
