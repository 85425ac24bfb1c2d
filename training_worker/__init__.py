"""The ringfleet training worker: ring all-reduce, distributed optimizer, elastic state, checkpoints, control."""
