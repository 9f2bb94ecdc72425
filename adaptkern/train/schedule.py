"""Which shape a run trains at: a list of (shape, end) segments. A run trains at a
segment's shape until the segment's trigger fires, then moves to the next; the last
segment never ends.

Two triggers:
* ``"compute"``: ``end`` is training compute (exact FLOPs, summed over ranks): leave the
  segment once the run has spent that much.
* ``"loss"`` (the default of ``from_plan``): ``end`` is a loss level: leave the segment once
  the run's smoothed training loss is at or below it. Loss is the state the plan is made in
  (Anagnostidis et al. switch where the loss reaches the crossing of two shapes' curves), so
  a run that learns faster or slower than the laws predicted still switches at the right
  point of its own curve; a compute trigger executes the plan's compute split whatever the
  loss, which is right only when the laws are."""

import math
from dataclasses import dataclass

TRIGGERS = ("compute", "loss")


@dataclass(frozen=True)
class ShapeSchedule:
    segments: tuple  # ((shape name, end), ...): compute ends increase / loss ends decrease; last never ends
    trigger: str = "compute"

    def __post_init__(self):
        if not self.segments:
            raise ValueError("ShapeSchedule: segments must hold at least one (shape, end)")
        if self.trigger not in TRIGGERS:
            raise ValueError(f"ShapeSchedule: trigger must be one of {TRIGGERS}, got {self.trigger!r}")
        ends = [float(end) for _, end in self.segments if end is not None]
        if any(math.isnan(end) for end in ends) or (self.trigger == "compute" and any(end < 0 for end in ends)):
            rule = "compute_end values must be numbers >= 0" if self.trigger == "compute" else "loss levels must be numbers"
            raise ValueError(f"ShapeSchedule: {rule}, got {ends}")
        if self.trigger == "compute" and any(b <= a for a, b in zip(ends, ends[1:])):
            raise ValueError(f"ShapeSchedule: compute_end values must increase, got {ends}")
        if self.trigger == "loss" and any(b >= a for a, b in zip(ends, ends[1:])):
            raise ValueError(f"ShapeSchedule: loss levels must decrease, got {ends}")
        never = math.inf if self.trigger == "compute" else -math.inf
        if self.segments[-1][1] is None or float(self.segments[-1][1]) != never:
            object.__setattr__(self, "segments", tuple(self.segments[:-1]) + ((self.segments[-1][0], never),))

    @classmethod
    def static(cls, shape: str) -> "ShapeSchedule":
        return cls(((shape, math.inf),))

    @classmethod
    def from_plan(cls, plan, name=str, trigger: str = "loss") -> "ShapeSchedule":
        """From ``ak.schedule.optimal_schedule``'s plan: switch when the smoothed training
        loss reaches each segment's ``loss_end`` (trigger "loss"), or when the compute reaches
        its ``compute_end`` (trigger "compute"). The planner makes no zero-cost segments; a
        segment given no compute at all is still dropped (it could not last a step)."""
        keep = [seg for seg in plan.segments if seg.compute > 0] or list(plan.segments[-1:])
        key = "loss_end" if trigger == "loss" else "compute_end"
        return cls(tuple((name(seg.shape), float(getattr(seg, key))) for seg in keep), trigger)

    def index_at(self, compute: float, smoothed_loss=None, current: int = 0) -> int:
        """The segment to train in now, from segment ``current``: by compute, or by the
        smoothed training loss (None: not known yet, stay)."""
        last = len(self.segments) - 1
        if self.trigger == "compute":
            for i, (_, end) in enumerate(self.segments):
                if compute < end:
                    return i
            return last
        while current < last and smoothed_loss is not None and smoothed_loss <= self.segments[current][1]:
            current += 1
        return current

    def shape_at(self, compute: float) -> str:
        """The shape at ``compute`` (compute trigger only)."""
        if self.trigger != "compute":
            raise ValueError("ShapeSchedule.shape_at: a loss-triggered schedule has no shape per compute")
        return self.segments[self.index_at(compute)][0]

    @property
    def shapes(self) -> list:
        return [shape for shape, _ in self.segments]

    def to_dict(self) -> dict:
        return {"segments": [[shape, None if math.isinf(end) else end] for shape, end in self.segments],
                "trigger": self.trigger}
