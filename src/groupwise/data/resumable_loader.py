"""A ``DataLoader`` that a mid-epoch resume continues at the next batch.

What torch's ``DataLoader`` lacks: a ``state_dict``. Lightning saves the ``state_dict`` of
every training loader that has one in the checkpoint (``loops.fit_loop.state_dict
["combined_loader"]``, ``FitLoop.on_save_checkpoint``) and hands it back through
``load_state_dict`` before the resumed epoch's iterator is made
(``FitLoop._load_combined_loader_states``); a loader without one restarts the epoch from
its first batch while the loop counts on from the batch it stopped at. This loader counts
the batches its current iterator has handed out (Lightning fetches a sized loader's batches
one at a time, with no pre-fetch, so that is the number the loop has consumed), and after
``load_state_dict`` its next iterator skips that many batches of indices without loading
them. The permutation is the sampler's (a function of seed and epoch, set by Lightning's
``set_epoch`` before the first index is drawn), so the batches that follow are those an
unbroken run would have seen. The skip is applied to the batch sampler, before workers
fetch, so it holds with ``num_workers > 0`` too.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader


class ResumableDataLoader(DataLoader):
    """``DataLoader`` with ``state_dict`` / ``load_state_dict``: the position in the epoch.

    Takes exactly ``DataLoader``'s arguments (Lightning re-creates it with a
    ``DistributedSampler`` under DDP); each rank then counts the batches of its own shard.
    """

    _batches_seen = 0  # class defaults: Lightning's re-instantiation calls __init__ anyway
    _skip = 0

    def state_dict(self) -> dict[str, Any]:
        """``{"batches": n}``: the current epoch's batches handed out so far."""
        return {"batches": self._batches_seen}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Make the next iterator skip the ``batches`` already seen. A position at the
        epoch's end (a save after its last batch) skips nothing: the next epoch starts."""
        batches = int(state_dict.get("batches", 0))
        self._skip = batches if 0 < batches < len(self) else 0

    @property
    def _index_sampler(self) -> Any:
        # torch's iterators draw their indices from this (``_BaseDataLoaderIter``); the
        # loader's ``__len__`` reads it too, and keeps the full length
        sampler = super()._index_sampler
        return (
            _SkipFirst(sampler, self._making_iterator_skip)
            if self._making_iterator_skip
            else sampler
        )

    _making_iterator_skip = 0

    def __iter__(self) -> Iterator[Any]:
        skip, self._skip = self._skip, 0
        self._making_iterator_skip = skip
        try:
            iterator = super().__iter__()
        finally:
            self._making_iterator_skip = 0
        if skip:  # a persistent workers' iterator draws later epochs' indices afresh from it
            iterator._index_sampler = super()._index_sampler
        self._batches_seen = skip
        return self._counted(iterator)

    def _counted(self, iterator: Iterator[Any]) -> Iterator[Any]:
        for batch in iterator:
            self._batches_seen += 1
            yield batch


class _SkipFirst:
    """A batch sampler that leaves out its first ``skip`` batches; its length stays the
    full one (a DataLoader iterator may call ``iter`` on it more than once as it starts)."""

    def __init__(self, batch_sampler: Any, skip: int) -> None:
        self.batch_sampler = batch_sampler
        self.skip = skip

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(iter(self.batch_sampler), self.skip, None)

    def __len__(self) -> int:
        return len(self.batch_sampler)
