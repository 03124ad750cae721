"""kvsim-study: the real-model study (dump, replay, closed loop; tables and claims with intervals).
Console script kvsim-study, or python -m kvsim.study."""
