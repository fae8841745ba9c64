"""The Encoder and what it is made of.
"""
