"""The workers' shared connection counts (``gateway.accept_share``): each worker writes
its own slot of one shared file and reads the others', so a worker knows at once when it
is ahead."""

from __future__ import annotations

import os

from gateway.accept_share import ConnectionShares, create_shares


def test_a_worker_is_ahead_while_it_has_more_than_the_least_loaded() -> None:
    fd = create_shares(3)
    try:
        a, b, c = (ConnectionShares(fd, worker, 3) for worker in range(3))
        assert not any(share.ahead() for share in (a, b, c))  # all even
        a.opened()
        assert a.ahead() and not b.ahead() and not c.ahead()
        b.opened()
        assert a.ahead() and b.ahead() and not c.ahead()  # c has none
        c.opened()
        assert not any(share.ahead() for share in (a, b, c))
        a.closed()
        assert not a.ahead() and b.ahead() and c.ahead()
    finally:
        os.close(fd)


def test_a_restarted_worker_starts_from_none() -> None:
    """Its predecessor's connections died with it: its slot is zeroed, not inherited."""
    fd = create_shares(2)
    try:
        first, other = ConnectionShares(fd, 0, 2), ConnectionShares(fd, 1, 2)
        for _ in range(5):
            first.opened()
        assert other.ahead() is False and first.ahead()
        replacement = ConnectionShares(fd, 0, 2)
        assert not replacement.ahead() and not other.ahead()
    finally:
        os.close(fd)
