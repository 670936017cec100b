"""One file per tab. Each builds its Blocks from the wrappers it is given and talks only to them."""
