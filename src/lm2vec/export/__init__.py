"""Exports and model cards.
"""
