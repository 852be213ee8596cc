//! A directory of `.npy` dumps as a runner (the dump protocol of CHECKPOINTS.md).
