"""Evaluation of a model: the volume probe that measures generated brains, conditioning fidelity and
diversity reports."""
