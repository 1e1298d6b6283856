"""What ``groupwise fit`` checks before Lightning writes anything.

Lightning builds the optimizer in ``configure_optimizers`` only after the logger has made
the run directory and ``SaveConfigCallback`` has written ``config.yaml`` into it (both in
``Trainer._run``'s setup), so a typo in a group rule used to leave an empty ``version_N/``
behind. The CLI calls ``check_before_fit`` before it creates the trainer: it builds the
model's optimizer and scheduler once on the real parameters (then drops them; nothing is
stepped and no parameter changes) and lets every callback that names groups check those
names against the real groups (``FreezeGroups.check_param_groups``), and every callback
that names a module of the net check that name (``WhiteningInit.check_net``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def check_before_fit(model: Any, callbacks: Iterable[Any]) -> None:
    """Raise the error ``fit`` would raise for the model's groups and schedule, or for a
    callback's group names. ``model`` is a ``Classifier`` (``build_optimizer``,
    ``build_scheduler``)."""
    optimizer = model.build_optimizer()
    # a stand-in length: the run's is known only once the trainer exists
    model.build_scheduler(optimizer, 1, check_length=False)
    for callback in callbacks:
        check = getattr(callback, "check_param_groups", None)
        if callable(check):
            check(optimizer.param_groups)
        check_net = getattr(callback, "check_net", None)
        if callable(check_net):
            check_net(model.net)
