"""Lightning's callback hook dispatch without the calls that do nothing.

For every hook Lightning calls every callback (``lightning.pytorch.trainer.call.
_call_callback_hooks``): per callback a getattr, its ``state_key`` (``ModelCheckpoint``'s
formats a dict), a profiler action name and context, and the call, also where the callback
does not implement the hook and the call runs ``Callback``'s empty method. A training step
dispatches six hooks; of the 14 callbacks of a default groupwise fit none implements
three of them and two or three implement each of the others. Each hook costs ~10 us
of that bookkeeping on a 2-core CPU even when no callback implements it.

What Lightning lacks is a dispatch that leaves out the empty calls. :func:`install`
replaces that function (once per process) by :func:`dispatch`, which for a trainer whose
profiler is :class:`~groupwise.profiler.NoProfiler` (it records nothing, so no profile
entry goes missing) calls the callbacks whose hook is not ``Callback``'s own, in
Lightning's order, with the same arguments and the same ``_current_fx_name`` on the
LightningModule. Any other trainer (a profiler set with ``--trainer.profiler``, a plain
``Trainer`` outside the CLI) and the ``monitoring_callbacks`` split of
``on_train_epoch_end`` go to Lightning's own function. ``tests/test_hook_dispatch.py``
compares the calls both make in a real fit. Should a Lightning release rename the function,
nothing is replaced (the fit keeps Lightning's dispatch, only slower) and that test fails.
"""

from __future__ import annotations

import logging
from typing import Any

from lightning.pytorch import Callback
from lightning.pytorch.trainer import call

from groupwise.profiler import NoProfiler

_lightning_dispatch = getattr(call, "_call_callback_hooks", None)


def dispatch(
    trainer: Any, hook_name: str, *args: Any, monitoring_callbacks: bool | None = None, **kwargs
) -> None:
    """``call._call_callback_hooks``, leaving out the callbacks whose ``hook_name`` is
    ``Callback``'s empty method, for trainers with :class:`NoProfiler`."""
    if monitoring_callbacks is not None or not isinstance(trainer.profiler, NoProfiler):
        _lightning_dispatch(
            trainer, hook_name, *args, monitoring_callbacks=monitoring_callbacks, **kwargs
        )
        return
    if call.log.isEnabledFor(logging.DEBUG):
        call.log.debug(f"{trainer.__class__.__name__}: calling callback hook: {hook_name}")
    empty = getattr(Callback, hook_name, None)
    pl_module = trainer.lightning_module
    if pl_module:
        prev_fx_name = pl_module._current_fx_name
        pl_module._current_fx_name = hook_name
    for callback in trainer.callbacks:
        fn = getattr(callback, hook_name)
        if getattr(fn, "__func__", None) is not empty and callable(fn):
            fn(trainer, pl_module, *args, **kwargs)
    if pl_module:
        pl_module._current_fx_name = prev_fx_name


def install() -> None:
    """Put :func:`dispatch` in place of Lightning's callback hook dispatch (idempotent)."""
    if _lightning_dispatch is not None:
        call._call_callback_hooks = dispatch
