"""`python -m hostd`: the card of one host, which runs (and restarts) its host daemon."""

from hostd.card import main

main()
