"""Redis: the client, the counters and their key layout, the worker's flusher, queries over them."""
