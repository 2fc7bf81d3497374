"""Fix 4: fairseq 0.12.2's "BetterTransformer" fast path for its transformer encoder.

``TransformerEncoderLayerBase._load_from_state_dict`` sets ``load_to_BT = True``.  From
then on, an eval-mode post-norm encoder (``TransformerEncoderBase.forward_scriptable``)
packs its input into a nested tensor and calls ``torch._transformer_encoder_layer_fwd``,
whose signature and mask handling changed after torch 1.12.  On current torch that fails
(``RuntimeError: Mask Type should be defined``, ``NestedTensorImpl doesn't support sizes``,
or a transposed padding mask), so ``fairseq-generate`` / ``fairseq-validate`` with a loaded
transformer checkpoint break.  The fast path is an inference-only shortcut for the same
math; the fix clears ``load_to_BT`` again after every state-dict load (and ``BT_version``
after construction), so the regular fairseq code path always runs.  The layer still copies
the weights into its fast-path tensors, so checkpoints stay interchangeable.  Mega's own
layers never use this class.
"""

import functools

_PATCH_MARK = "_mega_fairseq_bt_disabled"


def _wrap(method, after):
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        result = method(self, *args, **kwargs)
        after(self)
        return result

    setattr(wrapper, _PATCH_MARK, True)
    return wrapper


def _disable_fast_path(layer) -> None:
    layer.load_to_BT = False
    layer.BT_version = False


def apply() -> None:
    from fairseq.modules import transformer_layer

    layer_class = transformer_layer.TransformerEncoderLayerBase
    if getattr(layer_class._load_from_state_dict, _PATCH_MARK, False):
        return
    layer_class.__init__ = _wrap(layer_class.__init__, _disable_fast_path)
    layer_class._load_from_state_dict = _wrap(layer_class._load_from_state_dict, _disable_fast_path)
