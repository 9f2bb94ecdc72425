"""Which shape a run trains at: a list of (shape, compute_end) segments. A run trains at a
segment's shape until its training compute (exact FLOPs, summed over ranks) reaches the
segment's ``compute_end``, then moves to the next; the last segment never ends."""

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ShapeSchedule:
    segments: tuple  # ((shape name, compute_end), ...), compute_end increasing, last = inf

    def __post_init__(self):
        if not self.segments:
            raise ValueError("ShapeSchedule: segments must hold at least one (shape, compute_end)")
        ends = [float(end) for _, end in self.segments]
        if any(math.isnan(end) or end < 0 for end in ends):
            raise ValueError(f"ShapeSchedule: compute_end values must be numbers >= 0, got {ends}")
        if any(b <= a for a, b in zip(ends, ends[1:])):
            raise ValueError(f"ShapeSchedule: compute_end values must increase, got {ends}")
        if ends[-1] != math.inf:
            object.__setattr__(self, "segments", tuple(self.segments[:-1]) + ((self.segments[-1][0], math.inf),))

    @classmethod
    def static(cls, shape: str) -> "ShapeSchedule":
        return cls(((shape, math.inf),))

    @classmethod
    def from_plan(cls, plan, name=str, min_fraction: float = 1e-6) -> "ShapeSchedule":
        """From ``ak.schedule.optimal_schedule``'s plan: switch when the compute reaches each
        segment's ``compute_end`` (the plan's cumulative compute at the end of the segment).

        Segments given less than ``min_fraction`` of the plan's compute are dropped: they
        would not last a single step (typically a shape "free" above its law's loss at C=0,
        for the first fraction of a FLOP)."""
        keep = [seg for seg in plan.segments if seg.compute >= min_fraction * plan.total_compute]
        keep = keep or list(plan.segments[-1:])
        return cls(tuple((name(seg.shape), float(seg.compute_end)) for seg in keep))

    def shape_at(self, compute: float) -> str:
        for shape, end in self.segments:
            if compute < end:
                return shape
        return self.segments[-1][0]

    @property
    def shapes(self) -> list:
        return [shape for shape, _ in self.segments]

    def to_dict(self) -> dict:
        return {"segments": [[shape, None if math.isinf(end) else end] for shape, end in self.segments]}
