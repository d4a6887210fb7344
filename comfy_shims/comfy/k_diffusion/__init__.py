"""ComfyUI's ``comfy.k_diffusion`` package: only ``utils.FolderOfImages``' extension list is provided;
the samplers are placeholders."""
