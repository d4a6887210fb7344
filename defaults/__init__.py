"""Default models shipped with nodegraph, each with its data, training and evaluation code."""
