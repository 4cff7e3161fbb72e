"""A model's call lock held by another thread, for tests of what waits for it."""
import contextlib
import threading


@contextlib.contextmanager
def lock_held_elsewhere(model, timeout: float = 30):
    """Another thread holds `model`'s call lock (see kcompile.trainer._one_call_at_a_time; some
    call must have made it) from entry until exit."""
    held, release = threading.Event(), threading.Event()

    def hold():
        with model._call_lock[1]:
            held.set()
            release.wait(timeout)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(timeout), "the holding thread never took the lock"
        yield
    finally:
        release.set()
        holder.join()
