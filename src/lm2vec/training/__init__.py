"""Training: recipes, the loop, objectives, checkpoints.
"""
