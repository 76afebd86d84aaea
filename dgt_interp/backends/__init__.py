"""Framework backends for capture: the TransformerLens bridge (default) and nnsight.

Both read the same TransformerLens hook names (`dgt_interp.list_names(model)`); `capture(...,
backend="tl" | "nnsight")` picks one, the recorded tensors are identical.
"""
