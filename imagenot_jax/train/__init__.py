"""Training: the loop, the jitted steps, optimizer, EMA, mixing, sharding, checkpoints."""
