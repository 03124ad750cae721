"""kvsim-closed-loop: the model re-run with a rule's eviction in its KV cache, next to the offline
replay (README, "Closed loop"). Console script kvsim-closed-loop, or python -m kvsim.closed_loop."""
