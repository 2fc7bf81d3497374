"""Fix 15: ``fairseq-train`` sometimes aborts after it finished, with exit status 134 and
``terminate called without an active exception``.

fairseq's ``BufferedIterator`` prefetches batches in a daemon thread
(``fairseq.data.iterators.BackgroundConsumer``). With ``--num-workers 0`` that thread
builds the batches itself, in torch operations that run OpenMP parallel regions. When
training stops before the end of an epoch (``--max-update``, ``--max-valid-steps``) the
thread is still prefetching as the interpreter exits; if it is inside such a region when
the process tears down its threads, the C++ runtime aborts the already finished run
(measured: 1 in 10 to 1 in 20 short CPU runs with ``--num-workers 0``).

The fix gives the consumer a stop signal: it stops before fetching the next batch once
the interpreter is exiting, waits on a full queue in short intervals so it can see the
signal, and an ``atexit`` handler sets the signal and joins the running consumers (at most
a few seconds each) before the interpreter tears anything down. The batches it hands to
training, their order and the end-of-data and error signals are unchanged.
"""

import atexit
import queue
import threading
import weakref

_PATCH_MARK = "_mega_fairseq_stoppable"
_EXITING = threading.Event()
_RUNNING: "weakref.WeakSet[threading.Thread]" = weakref.WeakSet()
PUT_INTERVAL_S = 0.1
JOIN_TIMEOUT_S = 5.0


def _put_unless_exiting(target: queue.Queue, item) -> bool:
    """Put ``item`` into ``target``; False (item dropped) once the interpreter exits."""
    while not _EXITING.is_set():
        try:
            target.put(item, timeout=PUT_INTERVAL_S)
            return True
        except queue.Full:
            continue
    return False


def _stoppable_run(self) -> None:
    """``BackgroundConsumer.run`` with the stop signal: the same items in the same order,
    then fairseq's end-of-data sentinel, or the exception the source raised."""
    from fairseq.data import iterators

    import torch

    _RUNNING.add(self)
    if self.cuda_device is not None:
        # as fairseq: no context on GPU 0 when pinning memory for another device
        torch.cuda.set_device(self.cuda_device)
    try:
        for item in self._source:
            if not _put_unless_exiting(self._queue, item):
                return
            self.count += 1
            if self._max_len is not None and self.count >= self._max_len:
                break
            if _EXITING.is_set():
                return
        _put_unless_exiting(self._queue, iterators._sentinel)
    except Exception as error:  # noqa: BLE001  (handed to the consumer, as fairseq does)
        _put_unless_exiting(self._queue, error)


def _stop_consumers() -> None:
    _EXITING.set()
    for thread in list(_RUNNING):
        if thread is not threading.current_thread():
            thread.join(timeout=JOIN_TIMEOUT_S)


def apply() -> None:
    from fairseq.data import iterators

    consumer = iterators.BackgroundConsumer
    if getattr(consumer.run, _PATCH_MARK, False):
        return
    setattr(_stoppable_run, _PATCH_MARK, True)
    consumer.run = _stoppable_run
    atexit.register(_stop_consumers)
