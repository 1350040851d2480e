"""The models, behind one interface (``backend.Backend``: audio windows and label texts in,
embeddings out): ``clap/`` (CLAP exported to ONNX or fetched pre-exported; the folder's
contract is ``clap/manifest.py``), ``offline/`` (YAMNet + MiniLM from PyPI wheels), ``select``
(``model: auto`` and the banner's reason), ``labels`` and ``prototypes`` (label embeddings:
prompts, background, enrolled examples), ``adapter`` (a saved learned adapter applied to label
embeddings), ``level`` (the level stage some models need), ``ort`` (the one owner of
onnxruntime) and ``hub`` (pinned, verified downloads from the Hugging Face Hub)."""
