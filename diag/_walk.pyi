from collections.abc import Callable
from typing import Any

def walk(
    pending: list[Any],
    label: int,
    relabel_from: int | None,
    labels: dict[int, int],
    sources: set[int],
    coarse: bytearray,
    special_cache: dict[type, bool],
    special: Callable[[type], bool],
    extra: Callable[[Any], int],
    entries: list[tuple[Any, int, int]],
    deadline: float,
    clock: Callable[[], float],
    getsizeof: Callable[[Any], int],
) -> tuple[int, int, bool]: ...
