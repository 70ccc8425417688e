"""Graceful stop on SIGTERM (what a cluster scheduler sends before it kills a job) and SIGINT
(Ctrl-C): the training loop finishes its current step, writes a resumable checkpoint and exits
non-zero. A second signal acts at once, as it would without this handler.

Loader workers ignore both signals (`ignore_in_worker`, their worker_init_fn): a scheduler or a
terminal signals the whole process group, and a worker killed mid-epoch would make the loader
raise before the main process could save. They are started inside `workers_start_shielded()`,
so that they are immune from their first instruction, not only once their worker_init_fn runs,
and killed at exit (`kill_loader_workers`) when a crash leaves them alive.
"""
import atexit
import contextlib
import multiprocessing.util  # its exit handler is registered first, so kill_loader_workers runs before it
import signal

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Context manager that turns the first SIGTERM/SIGINT into a flag (`requested`, the signal's
    name) and restores the previous handlers on exit."""

    def __init__(self):
        self.requested = None
        self.previous = {}

    def _handle(self, signum, frame):
        if self.requested is not None:  # second signal: behave as if no handler were installed
            signal.signal(signum, self.previous.get(signum) or signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        self.requested = signal.Signals(signum).name

    def __enter__(self):
        for signum in SIGNALS:
            self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        return False

    @property
    def exit_code(self):
        """128 + the signal number, the shell's convention for 'ended by this signal'."""
        return 128 + signal.Signals[self.requested].value


class Stopped(Exception):
    """A stop signal cut work short between two of its steps (raised by `check`): the in-training
    probe stops within a batch of features or a probe epoch, not after its whole run (issue 20)."""


def check(stop):
    """Raise Stopped if `stop` (a StopRequest, or None) has received a signal."""
    if stop is not None and stop.requested:
        raise Stopped(stop.requested)


def ignore_in_worker(worker_id=None):
    for signum in SIGNALS:
        signal.signal(signum, signal.SIG_IGN)  # a signal held since the fork is dropped here
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


@contextlib.contextmanager
def workers_start_shielded():
    """Hold SIGTERM/SIGINT in this thread while a loader forks its workers (wrap `iter(loader)`).
    A forked worker inherits the mask, so a signal sent to the process group while it starts up
    waits until its worker_init_fn (ignore_in_worker) drops it. Without this, torch's worker
    SIGTERM handler, installed before worker_init_fn runs, kills the worker, and the loader
    fails with "worker exited unexpectedly" instead of the run saving and exiting 143. A signal
    to this process is delivered when the block ends (or at once to another thread), not lost."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class Preempted(Exception):
    """The run stopped on a signal after saving a resumable checkpoint; logs where, and carries
    the exit code (StopRequest.exit_code)."""

    def __init__(self, stop, log, where, resume='--resume'):
        message = f'stopped by {stop.requested} {where}; continue with {resume}'
        log.log(message)
        super().__init__(message)
        self.code = stop.exit_code


def loader_worker_death(error):
    """The words of torch's error for a loader worker that died under the loader (killed by a
    signal, as the OOM killer's SIGKILL; "exited unexpectedly"), or None for any other error (an
    exception raised inside a worker is a bug to show whole, not a memory problem)."""
    text = ' '.join(str(error).split())
    if isinstance(error, RuntimeError) and 'DataLoader worker' in text and (
            'exited unexpectedly' in text or 'is killed by signal' in text):
        return text[:120]
    return None


def kill_loader_workers():
    """At exit, SIGKILL the daemonic child processes still alive: loader workers of an iterator
    that outlived the run (one referenced by an uncaught exception's traceback). They ignore
    SIGTERM, and multiprocessing's own exit handler, which terminates (SIGTERM) and then joins
    them, would wait for them forever: a crashed run would never exit."""
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()


atexit.register(kill_loader_workers)  # atexit runs the last registered first
