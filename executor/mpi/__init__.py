"""MPI as the executor uses it: collectives (ring, tree, hierarchical, MPI's own), the gradient
exchange, groups, the watchdog (heartbeats, lost ranks, hangs), the rank's supervisor and
injected faults."""
