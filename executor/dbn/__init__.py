"""Deep belief nets: layer-by-layer pre-training over MPI, fine-tuning, and ``parasim pretrain``."""
