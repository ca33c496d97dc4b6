"""`python -m nicd`: the card process of one smart NIC."""

from nicd.card import main

main()
