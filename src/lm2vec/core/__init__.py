"""The Encoder and what it is made of: model sources, bidirectional attention, tokenization with
instructions, batching, pooling, adapters, sharded encode. Imports lm2vec.io and nothing else of lm2vec.
"""
