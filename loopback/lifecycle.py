"""What every stand-in shares: ``with stand_in:`` starts it and stops it however the block ends."""

from __future__ import annotations

from typing import Any, Self


class StartStop:
    """A stand-in with ``start() -> self`` and ``stop()``, usable as a context manager."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> Any:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
