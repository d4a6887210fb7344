"""Content signatures: the cache key of a node's result.

key = hash(class type, version, constant inputs, the signatures of its producers with the output
index, fingerprint). The node id never enters it (except for nodes that declare the hidden
``unique_id``), so an identical sub-graph in another workflow has the same keys. Each signature is
computed once, from its producers' signatures: linear in the number of nodes, where ComfyUI rebuilds
every key from the node's whole ancestry.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Iterable

from .context import Paths
from .node import Node, accepts_paths, is_nan
from .plan import PlannedNode

_BASE_FINGERPRINT = Node.fingerprint.__func__  # type: ignore[attr-defined]


def _never_equal() -> bytes:
    return b"nonce:" + os.urandom(12)


def fingerprint_of(node: PlannedNode, paths: Paths | None = None) -> Any:
    """The node's fingerprint (ComfyUI IS_CHANGED); ``None`` when it has none."""
    if node.is_changed is not None:
        return node.is_changed
    cls = node.cls
    if not cls.cacheable:
        return _never_equal()
    if cls.fingerprint.__func__ is _BASE_FINGERPRINT:  # type: ignore[attr-defined]
        return None
    kwargs = dict(node.constants)
    if accepts_paths(cls.fingerprint):
        kwargs["paths"] = paths if paths is not None else Paths()
    try:
        value = cls.fingerprint(**kwargs)
    except Exception:  # as ComfyUI: a failing fingerprint means "always re-run"
        return _never_equal()
    if is_nan(value) or not isinstance(value, (str, int, float, bytes, bool, tuple, type(None))):
        return _never_equal()
    return value


def _parts(node: PlannedNode, paths: Paths | None) -> tuple[bytes, tuple[tuple[bytes, str], ...]]:
    """The node's own part of its signature (class, version, constants, fingerprint, maybe its id) and,
    per link in name order, the bytes put before the producer's signature with the producer's id."""
    cls = node.cls
    constants = node.constants
    head = (node.class_type, cls.version,
            tuple(sorted(constants.items())) if len(constants) > 1 else tuple(constants.items()))
    dynamic = cls.fingerprint.__func__ is not _BASE_FINGERPRINT or not cls.cacheable or node.is_changed is not None  # type: ignore[attr-defined]
    if dynamic:
        head += ("fp", fingerprint_of(node, paths))
    if "unique_id" in cls.hidden:
        head += ("id", node.id)
    links = node.links
    parts = (repr(head).encode("utf-8", "surrogatepass"),
             tuple((f"{name}:{links[name].output}".encode(), links[name].node_id)
                   for name in (sorted(links) if len(links) > 1 else links)))
    if not dynamic:  # the same every time: kept on the node (constants and links do not change)
        node.signature_parts = parts
    return parts


_blake2b = hashlib.blake2b


def node_signature(node: PlannedNode, signatures: dict[str, bytes], paths: Paths | None = None) -> bytes:
    head, links = node.signature_parts or _parts(node, paths)
    if len(links) == 1:  # the usual node (a chain's): the same bytes as the join below, built at once
        prefix, producer = links[0]
        return _blake2b(head + b"\x1f" + prefix + signatures[producer], digest_size=16).digest()
    material = [head]
    for prefix, producer in links:
        material.append(prefix + signatures[producer])
    return _blake2b(b"\x1f".join(material), digest_size=16).digest()


def compute_signatures(nodes: dict[str, PlannedNode], order: Iterable[str],
                       signatures: dict[str, bytes] | None = None,
                       paths: Paths | None = None) -> dict[str, bytes]:
    """Signatures of ``order`` (topological), added to ``signatures`` (which may hold producers)."""
    signatures = {} if signatures is None else signatures
    for nid in order:
        signatures[nid] = node_signature(nodes[nid], signatures, paths)
    return signatures
