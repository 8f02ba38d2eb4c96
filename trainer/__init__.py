"""Training: launcher, mesh and sharding, train state, optimizers, checkpoints, metrics, tasks.

Imports every other package of ours; nothing imports ``trainer`` except benchmarks, tests and
notebooks.
"""
