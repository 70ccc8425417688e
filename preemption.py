"""Graceful stop on SIGTERM (what a cluster scheduler sends before it kills a job) and SIGINT
(Ctrl-C): the training loop finishes its current step, writes a resumable checkpoint and exits
non-zero. A second signal acts at once, as it would without this handler.

Loader workers ignore both signals (`ignore_in_worker`, their worker_init_fn): a scheduler or a
terminal signals the whole process group, and a worker killed mid-epoch would make the loader
raise before the main process could save.
"""
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


def ignore_in_worker(worker_id=None):
    for signum in SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


class Preempted(Exception):
    """The run stopped on a signal after saving a resumable checkpoint; logs where, and carries
    the exit code (StopRequest.exit_code)."""

    def __init__(self, stop, log, where):
        message = f'stopped by {stop.requested} {where}; continue with --resume'
        log.log(message)
        super().__init__(message)
        self.code = stop.exit_code
