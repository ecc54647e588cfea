"""Redis: the client, the counters and their key layout, queries over them."""
