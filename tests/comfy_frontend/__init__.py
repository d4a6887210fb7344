"""ComfyUI's official frontend against nodegraph: the routes it calls (HTTP tests) and the page itself in a
headless Chromium (browser tests)."""
