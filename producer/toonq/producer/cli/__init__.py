"""The `toonq` command line: the queue commands, and the group other packages add to."""
