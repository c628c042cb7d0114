"""Plate reading: the reader and the background jobs that run it."""
