"""Export a multi-exit checkpoint to a mose model directory (one ONNX file per exit).

Installed as ``mose_export`` (extra ``[train]``). Needs torch; the runtime never imports it.
"""
