"""The plan interpreter: each rank runs its program of the Plan (forward, backward, updates, ZeRO),
with the model's tensors, and measures it (``execute``); checkpoints and resuming
(``checkpoint``)."""
