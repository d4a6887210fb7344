"""The feature flags the server announces (``GET /features`` and the WebSocket ``feature_flags`` reply).

``supports_preview_metadata``: image frames go as ``PREVIEW_IMAGE_WITH_METADATA`` to the clients that
announce the same flag (ComfyUI's frontend, our canvas); the others get ``PREVIEW_IMAGE``. What clients
announce is read in :class:`nodegraph.queue.messages.ClientFeatures`.
"""

from __future__ import annotations

#: ``max_upload_size`` is replaced by the configured cap where it is answered
FEATURES = {"supports_preview_metadata": True, "max_upload_size": 100 * 1024 * 1024}
