"""Supervised tasks of the two source papers: data pipelines feeding the shared cores."""
