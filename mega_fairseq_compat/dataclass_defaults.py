"""Fix 1 and 2: dataclass instances as field defaults in fairseq 0.12.2 and hydra-core 1.0.7.

Python 3.11 treats any default whose class is unhashable as mutable and raises
``ValueError: mutable default <class ...> for field ... is not allowed``.  Every
non-frozen dataclass is unhashable, so fairseq's ``FairseqConfig.common = CommonConfig()``
and hydra's ``JobConf.JobConfig.override_dirname = OverrideDirname()`` fail at import.
Switching them to ``default_factory`` is not an option: fairseq's ``hydra_init`` reads
``Field.default`` of ``FairseqConfig``'s fields.

The fix wraps :func:`dataclasses._get_field` (the function that performs the check) so
that, *only for classes defined in fairseq or hydra modules*, a dataclass-instance default
is accepted exactly as Python <= 3.10 accepted it.  The default's class is made hashable
only for the duration of that one check.  Nothing changes on Python < 3.11 or for any
other code.
"""

import sys

PATCHED_MODULE_PREFIXES = ("fairseq", "hydra")

_original_get_field = None


def _defined_in_patched_module(cls) -> bool:
    module = getattr(cls, "__module__", "") or ""
    return any(
        module == prefix or module.startswith(prefix + ".")
        for prefix in PATCHED_MODULE_PREFIXES
    )


def _get_field_allowing_dataclass_defaults(cls, a_name, a_type, *args, **kwargs):
    import dataclasses

    default = getattr(cls, a_name, dataclasses.MISSING)
    if isinstance(default, dataclasses.Field):  # written as ``x: T = field(default=...)``
        default = default.default
    default_class = type(default)
    needs_exemption = (
        _defined_in_patched_module(cls)
        and dataclasses.is_dataclass(default)
        and not isinstance(default, type)
        and default_class.__hash__ is None
    )
    if not needs_exemption:
        return _original_get_field(cls, a_name, a_type, *args, **kwargs)
    own_hash = default_class.__dict__.get("__hash__", dataclasses.MISSING)
    default_class.__hash__ = object.__hash__
    try:
        return _original_get_field(cls, a_name, a_type, *args, **kwargs)
    finally:
        if own_hash is dataclasses.MISSING:
            del default_class.__hash__
        else:
            default_class.__hash__ = own_hash


def needed() -> bool:
    return sys.version_info >= (3, 11)


def apply() -> None:
    """Install the wrapper once; a no-op on Python < 3.11."""
    global _original_get_field
    if not needed() or _original_get_field is not None:
        return
    # imported here, not at the top: this module is loaded by the import hook while
    # ``dataclasses`` itself may still be initialising
    import dataclasses

    if dataclasses._get_field is _get_field_allowing_dataclass_defaults:
        return  # the import above ran the hook, which applied the fix already
    _original_get_field = dataclasses._get_field
    dataclasses._get_field = _get_field_allowing_dataclass_defaults
