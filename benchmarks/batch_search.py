"""The largest batch that fits a memory budget, found with few (expensive) measurements.

No flags here, so tests can import it beside other absl programs.
"""

from __future__ import annotations

from collections.abc import Callable


def largest_batch(memory_of: Callable[[int], int], budget: int,
                  multiple: int) -> tuple[int, dict[int, int]]:
    """The largest multiple of ``multiple`` whose ``memory_of(batch)`` fits ``budget`` bytes,
    and every ``{batch: bytes}`` measured on the way (0 when even ``multiple`` does not fit).

    Starts from the affine prediction of two compiles, brackets the answer by galloping
    from there (steps of 1, 2, 4, ... multiples) and bisects the bracket: a few compiles
    when the prediction is good, O(log) when it is not (e.g. with accumulation, whose
    fixed cost is the full batch's input and whose slope is a micro-batch's).
    """
    seen: dict[int, int] = {}

    def fits(batch: int) -> bool:
        if batch not in seen:
            seen[batch] = memory_of(batch)
        return seen[batch] <= budget

    if not fits(multiple):
        return 0, seen
    far = 4 * multiple
    fits(far)
    slope = (seen[far] - seen[multiple]) / (far - multiple)
    guess = far if slope <= 0 else int((budget - seen[multiple]) / slope + multiple)
    guess = max(multiple, guess // multiple * multiple)
    step = multiple
    if fits(guess):
        low = guess
        while fits(low + step):
            low, step = low + step, step * 2
        high = low + step
    else:
        high = guess
        while not fits(max(multiple, high - step)):
            high, step = max(multiple, high - step), step * 2
        low = max(multiple, high - step)
    while high - low > multiple:
        middle = max(low + multiple, (low + high) // 2 // multiple * multiple)
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low, seen
