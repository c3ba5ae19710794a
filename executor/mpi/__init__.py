"""MPI as the executor uses it: collectives (ring, tree, hierarchical, MPI's own), the gradient
exchange, groups, the watchdog and injected faults."""
