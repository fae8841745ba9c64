"""Training: recipes (recipe.py), the loop (loop.py), objectives and their batches, LoRA, checkpoints,
precision, dev evaluation while training. Imports lm2vec.core, lm2vec.data and lm2vec.io.
"""
