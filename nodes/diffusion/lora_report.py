"""What LoraLoader / LoraLoaderModelOnly say about a LoRA's keys they did not apply.

ComfyUI prints ``lora key not loaded: <key>`` to its console for each and goes on. nodegraph goes on too,
but as a node warning (:meth:`nodegraph.context.NodeContext.warn`: the log, the frontend's logs panel, and a
``node_warning`` message to clients that take nodegraph's events) with the count and the first names. A
LoRA none of whose weights apply is an error (ComfyUI applies nothing and says so only in the console).

Keys counted: the low-rank layers a reader took as its part but could not apply (no such layer, or its
``up``/``down`` matrix missing: :attr:`~nodegraph_nodes.diffusion.components.LoraPatch.unmatched`), and
weights in forms nodegraph does not read (DoRA's ``dora_scale``, LoHa / LoKr factors, full ``diff``
weights …). Text-encoder keys count only where the node applies the text encoders (LoraLoader with a
non-zero ``strength_clip``).
"""

from __future__ import annotations

from nodegraph_nodes.diffusion.lora import _SUFFIXES, TEXT_KEY_STARTS

#: names listed in one warning
SHOWN = 5


def unread_forms(sd: dict, text: bool) -> list[str]:
    """Keys of LoRA ``sd`` that are not low-rank ``up``/``down``/``alpha`` weights (``text``: text-encoder
    keys included)."""
    return [k for k in sd if not k.endswith(tuple(_SUFFIXES)) and (text or not k.startswith(TEXT_KEY_STARTS))]


def unmatched_message(name: str, keys: list[str]) -> str:
    shown = ", ".join(keys[:SHOWN]) + (f", … ({len(keys) - SHOWN} more)" if len(keys) > SHOWN else "")
    return (f"LoRA {name}: {len(keys)} key{'s' if len(keys) != 1 else ''} not loaded (no matching layer in "
            f"this model, or a weight form nodegraph does not read): {shown}")


def warn_unmatched(ctx, name: str, keys: list[str]) -> None:
    """One warning for LoRA ``name``'s unapplied ``keys`` (none: nothing)."""
    keys = list(dict.fromkeys(keys))
    if keys:
        ctx.warn(unmatched_message(name, keys))
