"""The feedback loop: signed tickets on answers, clicks counted against them, live hit rates, the quality alarm."""
