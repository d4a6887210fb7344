"""Tests of the default models that ship in the node library."""
