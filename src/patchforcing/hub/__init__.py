"""The Hugging Face side of the package: a diffusers pipeline, exported pipeline folders with a
model card, and reading such folders (locally or from the local Hugging Face cache).

``patchforcing.hub.folder`` needs neither diffusers nor huggingface_hub to read an exported folder,
so ``load_model`` imports it at no cost; the pipeline (``patchforcing.hub.pipeline``) needs
diffusers (extra ``[vae]``) and is imported only when it is used (``pf.PatchForcingPipeline``).
"""
