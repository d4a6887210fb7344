"""ComfyUI's ``comfy_execution`` package: ``graph_utils`` (``GraphBuilder`` for expansions) and
``graph`` (``ExecutionBlocker``, ``DynamicPrompt``); other modules are placeholders."""
