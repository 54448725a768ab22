"""What a verification pass costs, by tree size: the curve a calibration measured (`CostCurve`) and
that curve corrected by the forward times decoding steps actually take (`LearnedCost`).

Token Recycling pays for its drafts in verification: a forward pass over n tree tokens costs more
than over one token, by how much depends on the device (steep on a small CPU, nearly flat on a GPU;
BENCHMARKS.md has measured curves). The `auto` tree is sized by these curves (`tr.drafts`);
`tr.device.calibrate` measures the first one.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

HALF_LIFE = 512  # decoding steps: averages per-step noise (±15% on the 2-core CPU), follows a host's drift
SEEN = 2.0  # decayed timings needed before they correct the curve
MIN_FACTOR = 0.1  # a correction must not make a pass free
TIMED = 0.5  # decayed timings that make a size one the correction line may be read at
PROBE_BELOW = 4.0  # decayed timings of one-token passes below which the drafter verifies the root alone
PROBE_SHARE = 8  # until then, one probe per this many timed trees


@dataclass
class CostCurve:
    """Seconds of one forward pass over `sizes[i]` new tokens behind a cache of `context` tokens:
    `measured` as timed, `seconds` the closest non-decreasing fit to it (see `monotone`)."""

    sizes: list[int]
    seconds: list[float]
    context: int
    device: str
    measured: list[float] = field(default_factory=list)
    steps: float = 0.0  # decayed count of decoding steps whose timings corrected `measured` (0: as calibrated)

    def cost(self, n: int) -> float:
        """Linear interpolation; beyond the last size, extrapolated from the last two points."""
        sizes, seconds = self.sizes, self.seconds
        if n <= sizes[0]:
            return seconds[0]
        for (n0, s0), (n1, s1) in zip(zip(sizes, seconds), zip(sizes[1:], seconds[1:])):
            if n <= n1:
                return s0 + (s1 - s0) * (n - n0) / (n1 - n0)
        (n0, s0), (n1, s1) = (sizes[-2], seconds[-2]), (sizes[-1], seconds[-1])
        return s1 + (s1 - s0) * (n - n1) / (n1 - n0)

    def relative(self, n: int) -> float:
        """Cost of n tokens in units of one token's forward pass."""
        return self.cost(n) / self.seconds[0]


def monotone(values: list[float]) -> list[float]:
    """The non-decreasing sequence closest to `values` in least squares (pool adjacent violators).

    A pass over more tokens does more work, so a dip in a measured curve is timing noise; left in, it
    decides the tree: on a GPU, where the curve is flat within a few percent, one noisy dip held `auto`
    to mid-sized trees (BENCHMARKS.md, the H100 runs). Pooling averages each dip with the rises around
    it, so real steps stay; a real dip is flattened too, the price of not trusting noise.
    """
    blocks: list[list[float]] = []  # [sum, count] of runs pooled to their mean
    for value in values:
        blocks.append([value, 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    return [total / count for total, count in blocks for _ in range(count)]


class LearnedCost:
    """The calibrated curve, corrected by the forward times of the decoding steps themselves.

    A calibration is a few seconds' snapshot, and on a shared host its shape is not to be trusted
    (back-to-back calibrations can disagree widely; BENCHMARKS.md). Each step's forward time at its tree size n, divided by the
    calibrated cost of n, is a correction factor; a straight line in n fitted to the decayed factors
    (`_corrected`) scales the calibrated curve, read within the range of sizes timed. Only
    ratios between sizes choose a tree, so the unit must be timed in the same conditions: when too few
    one-token passes have been timed (`needs_probe`), the drafter's next step verifies the root alone (a
    plain decoding step: after every 8 timed trees at first, then about one step in 160).
    """

    def __init__(self, prior: CostCurve, half_life: float = HALF_LIFE):
        self.prior = prior
        self.decay = 0.5 ** (1 / half_life)
        self.weights = [0.0] * len(prior.sizes)  # decayed count of timings per calibrated size
        self.sums = [0.0] * len(prior.sizes)  # decayed sum of their correction factors
        self.curve = prior

    def relative(self, n: int) -> float:
        return self.curve.relative(n)

    def needs_probe(self) -> bool:
        """Whether the next step should time a one-token pass: one per `PROBE_SHARE` timed trees until
        `PROBE_BELOW` are known, then whenever their decayed count falls below that."""
        unit, trees = self.weights[0], sum(self.weights[1:])
        return self.prior.sizes[0] == 1 and unit < PROBE_BELOW and trees >= PROBE_SHARE * (unit + 1)

    def observe(self, n: int, seconds: float) -> None:
        """Learn from one verification pass over `n` tokens that took `seconds`."""
        factor = seconds / self.prior.cost(n)
        self.weights = [w * self.decay for w in self.weights]
        self.sums = [s * self.decay for s in self.sums]
        sizes = self.prior.sizes
        i = bisect.bisect_left(sizes, n)
        if i == len(sizes) or sizes[i] == n or i == 0:  # beyond the last size it counts for the last
            shares = [(min(i, len(sizes) - 1), 1.0)]
        else:  # between two sizes, shared between them by distance
            upper = (n - sizes[i - 1]) / (sizes[i] - sizes[i - 1])
            shares = [(i - 1, 1.0 - upper), (i, upper)]
        for j, share in shares:
            self.weights[j] += share
            self.sums[j] += share * factor
        self.curve = self._corrected()

    def _corrected(self) -> CostCurve:
        """The prior scaled by a straight line in n fitted to the correction factors (weighted least squares):
        every timing informs the whole curve, so a size timed only a few times cannot put a spike in it."""
        prior, total = self.prior, sum(self.weights)
        if total < SEEN:
            return prior
        xs = [n - 1 for n in prior.sizes]
        x_mean = sum(w * x for w, x in zip(self.weights, xs)) / total
        y_mean = sum(self.sums) / total
        spread = sum(w * (x - x_mean) ** 2 for w, x in zip(self.weights, xs))
        slope = sum((x - x_mean) * (s - w * y_mean) for w, s, x in zip(self.weights, self.sums, xs)) / spread \
            if spread > 1e-9 else 0.0  # one size timed: a level, not a shape
        # Outside the sizes steps timed, the line is not evidence: there each size keeps the factor of the
        # nearest timed one (a line through small CPU trees, extended, would misprice large ones).
        timed = [x for w, x in zip(self.weights, xs) if w >= TIMED]
        low, high = (min(timed), max(timed)) if timed else (x_mean, x_mean)
        corrected = [seconds * max(y_mean + slope * (min(max(x, low), high) - x_mean), MIN_FACTOR)
                     for seconds, x in zip(prior.seconds, xs)]
        return CostCurve(prior.sizes, monotone(corrected), prior.context, prior.device, corrected, total)
