"""Export a multi-exit checkpoint to a mose model directory (one ONNX file per exit).

Installed as ``mose_export`` (extra ``[train]``). Needs torch; the runtime never imports it.
This package's ``__init__`` imports nothing heavy, so ``mose_export.cli`` loads without torch.

- ``exporter``: ``export_model(source, out, exits, ...)`` and ``verify_model_dir(model, dir)``
- ``onnx_export``: tracing an exit, graph inspection, int8 quantisation (and why not optimum)
- ``parity``: ONNX vs PyTorch checks and their report
- ``inputs``: the real code and text the checks run on, tokenised as the runtime does
- ``cli``: ``mose export``
"""
