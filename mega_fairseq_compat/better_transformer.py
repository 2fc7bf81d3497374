"""Fix 4: fairseq 0.12.2's "BetterTransformer" fast path in ``TransformerEncoderLayerBase``.

After a checkpoint load (``_load_from_state_dict`` sets ``load_to_BT``) an eval-mode
post-norm encoder layer calls ``torch._transformer_encoder_layer_fwd``, whose signature
and mask handling changed after torch 1.12: on current torch it fails with
``RuntimeError: Mask Type should be defined`` and can take the process down.  The fast
path is a pure inference optimisation of the same math, so it is disabled by clearing
``BT_version`` after each layer's ``__init__``; the regular fairseq code path runs instead.
Mega's own layers never use this class.
"""

import functools

_PATCH_MARK = "_mega_fairseq_bt_disabled"


def apply() -> None:
    from fairseq.modules import transformer_layer

    layer_class = transformer_layer.TransformerEncoderLayerBase
    if getattr(layer_class.__init__, _PATCH_MARK, False):
        return
    original_init = layer_class.__init__

    @functools.wraps(original_init)
    def init_without_fast_path(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.BT_version = False

    setattr(init_without_fast_path, _PATCH_MARK, True)
    layer_class.__init__ = init_without_fast_path
