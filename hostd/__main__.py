"""`python -m hostd`: the host daemon."""

from hostd.daemon import main

main()
