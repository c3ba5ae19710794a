"""``parasim calibrate``: kernels, the machine's cores, links and collectives measured into a
profile."""
