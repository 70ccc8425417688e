"""One run at a time in an experiment folder (issue 20).

Two runs in one folder corrupt each other: their metrics.jsonl lines interleave, their
checkpoints replace each other's. That is what a requeued job started beside a live one does.
`FolderLock` holds an exclusive `fcntl.flock` on `FOLDER/.lock` for the whole run; the
operating system releases it when the process ends, however it ends (SIGKILL, OOM killer,
node reboot), so a stale lock never blocks a resumed run. A second run is refused in one
line naming the holder's PID and host, which the holder writes into the file.

The file is deleted when the lock is released. A run that opens the file just before the
holder deletes it would lock a file no longer in the folder, so after locking, a run checks
that the path still names the file it locked, and tries again if not.
"""
import contextlib
import errno
import fcntl
import os
import socket
import sys
import time

from utils import InputError

LOCK_NAME = '.lock'
NO_LOCKS = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP)  # a file system without flock (NFS nolock, Lustre)
_held = set()  # descriptors of the locks this process holds


def _close_in_child():
    """A forked child (a loader worker) closes its copies of the held locks' descriptors: a worker
    outliving a SIGKILLed run would otherwise hold the lock for a few seconds (the lock stays the
    parent's: it holds its own descriptor)."""
    for fd in list(_held):
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_close_in_child)


class FolderLock:
    """Context manager: the lock of `folder` (created if needed) for the `with` block; does
    nothing when not `enabled` (ranks other than 0 of a distributed run, which write nothing)."""

    def __init__(self, folder, enabled=True):
        self.path, self.enabled, self.fd = os.path.join(folder, LOCK_NAME), enabled, None

    def __enter__(self):
        if self.enabled:
            self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
        return False

    def acquire(self):
        try:
            self._acquire()
        except OSError as error:
            if error.errno in NO_LOCKS:
                print(f'warning: {os.path.dirname(self.path)} cannot be locked ({error.strerror}): nothing stops a '
                      f'second run in this folder, start one at a time', file=sys.stderr)
                return
            raise InputError(f'cannot lock {os.path.dirname(self.path)} ({error.strerror}): free space or fix '
                             f'permissions there') from None

    def _acquire(self):
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 512).decode(errors='replace').strip() or 'a process that wrote no name yet'
                os.close(fd)
                raise InputError(f'{os.path.dirname(self.path)} is in use by another run ({holder}): wait for it '
                                 f'to end, or stop it, or choose another experiment name') from None
            except OSError:
                os.close(fd)
                raise
            try:
                same_file = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same_file = False
            if same_file:
                break
            os.close(fd)  # the holder deleted it while we waited for it: lock the new one
        self.fd = fd
        _held.add(fd)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f'PID {os.getpid()} on host {socket.gethostname()}, since '
                         f'{time.strftime("%Y-%m-%d %H:%M:%S")}\n'.encode())
        except OSError:
            self.release()
            raise

    def release(self):
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.remove(self.path)  # before unlocking: a waiting run then retries on a new file
        _held.discard(self.fd)
        os.close(self.fd)  # closing the descriptor releases the lock
        self.fd = None
