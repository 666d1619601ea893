"""The model: the decoder-only transformer and what it is made of.

  transformer  the Flax (linen) model: logical axes, remat, scan, KV cache
  attention    attention per backend: custom-VJP XLA, splash (TPU), cuDNN (GPU)
  linear       the matmul with its own VJP (the CPU trainer's hot path)
  sizes        the named model sizes (paper's 600m-13b, CPU's cpu-*)
"""
