"""The HTTP server.
"""
