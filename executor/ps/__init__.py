"""Parameter servers: the server ranks, the workers' client, Downpour."""
