"""shmq's exceptions, each also an instance of the standard library's class for the same thing,
so that code written for multiprocessing.Queue (``except queue.Empty:``) works unchanged."""

import queue

__all__ = ["Error", "Full", "Empty", "Closed", "ShutDown", "InvalidArgument", "AlreadyExists",
           "NotFound", "Incompatible", "MessageTooLarge", "DecodeError"]


class Error(Exception):
    """Every shmq error (shmq::Error in C++)."""


class Full(Error, queue.Full):
    """put found no room in time (put_nowait, or put with a timeout)."""


class Empty(Error, queue.Empty):
    """get found no message in time (get_nowait, or get with a timeout)."""


class Closed(Error, ValueError):
    """put or get on a handle after close(); multiprocessing raises ValueError here."""


class ShutDown(Error, getattr(queue, "ShutDown", Exception)):
    """The queue was shut down (queue.ShutDown on Python 3.13 and later)."""


class InvalidArgument(Error, ValueError):
    """A bad name, option or type description."""


class AlreadyExists(Error, FileExistsError):
    """create() of a name that is taken."""


class NotFound(Error, FileNotFoundError):
    """open() of a queue that does not exist (or an unnamed one whose creator let it go)."""


class Incompatible(Error, TypeError):
    """The queue holds another type of message than asked for, or is not a shmq queue."""


class MessageTooLarge(Error, ValueError):
    """The encoded object can never fit the queue's ring; nothing was written."""


class DecodeError(Error):
    """A message got from the queue could not be turned back into an object; it was dropped.
    For get_many, ``items`` holds the other messages taken with it, in order."""

    items = ()
