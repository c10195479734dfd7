"""`python -m toonq.producer.cli`: the `toonq` command without its console script."""

from toonq.producer.cli.main import main

main()
