"""The HTTP server (app.py) with its request schema, batching queue and metrics.
Imports lm2vec.core and lm2vec.io.
"""
