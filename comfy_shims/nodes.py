"""ComfyUI's ``nodes`` module for custom node packs: ``MAX_RESOLUTION``, ``NODE_CLASS_MAPPINGS``,
``NODE_DISPLAY_NAME_MAPPINGS``, the core node classes by their ComfyUI names (our nodes wrapped as
classic classes, ``nodegraph.comfy_compat.native``: a pack may call or subclass them) and
``common_ksampler``.

``NODE_CLASS_MAPPINGS`` holds every registered class: ours wrapped, the packs' as they wrote them. It
is rebuilt when the loader binds a registry; a pack that adds entries to it at import time does not
register nodes that way (nodegraph reads each pack's own ``NODE_CLASS_MAPPINGS``).
"""

from __future__ import annotations

from typing import Any

from nodegraph.comfy_compat.classic import ClassicNode
from nodegraph.comfy_compat.host import HOST
from nodegraph.comfy_compat.native import classic_class, run_native
from nodegraph.comfy_compat.unsupported import NotSupportedByNodegraph
from ._attrs import missing_attribute

MAX_RESOLUTION = 16384

NODE_CLASS_MAPPINGS: dict[str, Any] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
EXTENSION_WEB_DIRS: dict[str, str] = {}
LOADED_MODULE_DIRS: dict[str, str] = {}

_wrapped: dict[tuple[str, type], type] = {}


def _as_comfy(name: str, cls: type) -> type:
    if issubclass(cls, ClassicNode):
        return cls.comfy_class
    key = (name, cls)
    wrapped = _wrapped.get(key)
    if wrapped is None:
        wrapped = _wrapped[key] = classic_class(name, cls)
    return wrapped


def _rebuild(registry: Any) -> None:
    mappings = {name: _as_comfy(name, registry[name]) for name in registry}
    NODE_CLASS_MAPPINGS.clear()
    NODE_CLASS_MAPPINGS.update(mappings)
    NODE_DISPLAY_NAME_MAPPINGS.clear()
    NODE_DISPLAY_NAME_MAPPINGS.update({name: registry[name].display_name for name in registry
                                       if registry[name].display_name})
    for pack in getattr(registry, "custom_packs", ()):
        LOADED_MODULE_DIRS[pack.name] = str(pack.path)
        if pack.web_dir is not None:
            EXTENSION_WEB_DIRS[pack.name] = str(pack.web_dir)


HOST.on_registry.append(_rebuild)
if HOST.registry is not None:
    _rebuild(HOST.registry)


def __getattr__(name: str) -> Any:
    # the core classes by their ComfyUI names: nodes.SaveImage, nodes.LoraLoader, …
    cls = NODE_CLASS_MAPPINGS.get(name)
    if cls is not None:
        return cls
    return missing_attribute("nodes", name)


def before_node_execution() -> None:
    from nodegraph.comfy_compat.current import current_node

    ctx = current_node()
    if ctx is not None:
        ctx.check_interrupted()


def interrupt_processing(value: bool = True) -> None:
    from nodegraph.comfy_compat.current import current_node

    ctx = current_node()
    if ctx is not None and value:
        ctx.run.interrupt.set()


def common_ksampler(model: Any, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
                    positive: Any, negative: Any, latent: dict, denoise: float = 1.0, disable_noise: bool = False,
                    start_step: int | None = None, last_step: int | None = None,
                    force_full_denoise: bool = False) -> tuple:
    """ComfyUI's sampling helper: our KSampler (or KSamplerAdvanced for a step window / no noise)."""
    registry = HOST.registry
    if disable_noise or start_step is not None or last_step is not None:
        cls = registry.get("KSamplerAdvanced") if registry is not None else None
        if cls is None:
            raise NotSupportedByNodegraph("nodes.common_ksampler (no KSamplerAdvanced is registered)")
        return run_native(cls, "KSamplerAdvanced", dict(
            model=model, add_noise="disable" if disable_noise else "enable", noise_seed=seed, steps=steps,
            cfg=cfg, sampler_name=sampler_name, scheduler=scheduler, positive=positive, negative=negative,
            latent_image=latent, start_at_step=start_step or 0,
            end_at_step=last_step if last_step is not None else 10000,
            return_with_leftover_noise="disable" if force_full_denoise else "enable"))
    cls = registry.get("KSampler") if registry is not None else None
    if cls is None:
        raise NotSupportedByNodegraph("nodes.common_ksampler (no KSampler is registered)")
    return run_native(cls, "KSampler", dict(model=model, seed=seed, steps=steps, cfg=cfg, sampler_name=sampler_name,
                                            scheduler=scheduler, positive=positive, negative=negative,
                                            latent_image=latent, denoise=denoise))
