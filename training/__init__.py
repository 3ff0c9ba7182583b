"""MoSE training: the multi-exit encoder, losses, data builders and recipes.

Installed as ``mose_training`` (extra ``[train]``). Needs torch; the runtime never imports it.
"""
