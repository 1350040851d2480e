"""Accuracy, apart from the runtime: ``evaluate`` (datasets, embeddings cache, top-1 / top-5 /
mAP, class-fold protocols, reports) and ``training`` (the learned zero-shot adapters of the
papers and the residual ones: bilinear WARP, nonlinear, reweight, residual). The runtime
applies a saved adapter with ``monitor.models.adapter``."""
