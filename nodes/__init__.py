"""The built-in node library, one module per family (image, io, primitives, flow, ...).

The registry imports every module here and registers its :class:`nodegraph.node.Node` subclasses.
A class that sets ``abstract = True`` in its own body is a base class and is not registered.
"""
