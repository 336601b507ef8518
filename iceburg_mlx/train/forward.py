"""Forward passes over mlx-lm models with a custom attention mask (for packed rows).

mlx-lm's model classes take no mask argument: each attention layer asks its cache object for the
mask (`make_mask`) and the rotary offset (`offset`). `MaskOnlyCache` answers with a given mask and
offset 0 and stores nothing, so packed conversations cannot attend to each other while the model
code stays mlx-lm's own.
"""

from __future__ import annotations


class MaskOnlyCache:
    offset = 0

    def __init__(self, mask):
        self.mask = mask

    def update_and_fetch(self, keys, values):
        return keys, values

    def make_mask(self, *args, **kwargs):
        return self.mask

    def __bool__(self) -> bool:  # mlx-lm tests `if cache and hasattr(cache, "make_mask")`
        return True


def hidden_states(model, inputs, attn_mask=None):
    """Final-norm hidden states (B, L, D); `attn_mask` (B, 1, L, L) bool, None for plain causal."""
    if attn_mask is None:
        return model.model(inputs)
    return model.model(inputs, cache=[MaskOnlyCache(attn_mask)] * len(model.layers))
