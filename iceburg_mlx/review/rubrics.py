"""Each role's review rubric: a few criteria, each scored 1-5 for both responses.

The criteria follow what the role is trained to do (data/README.md): the oracle's verdict,
reasons and calibration; the surveyor's findings, sources and confidence; the dissident's
assessment, steelman and mechanism; the synthesist's mapping, prediction and limits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from iceburg_mlx.errors import ConfigError

SCALE = (1, 5)   # 1 = poor, 3 = acceptable, 5 = excellent


@dataclass(frozen=True)
class Criterion:
    key: str      # stored with each score
    label: str    # shown on the page
    help: str     # one line under the label

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


RUBRICS: dict[str, tuple[Criterion, ...]] = {
    "oracle": (
        Criterion("verdict", "Verdict correct", "Is the verdict (true / false / partly true / unverifiable) the right one?"),
        Criterion("reasons", "Reasons decisive", "Do the reasons settle the question, with no padding or invented facts?"),
        Criterion("calibration", "Confidence calibrated", "Does the stated confidence fit the strength of the evidence?"),
    ),
    "surveyor": (
        Criterion("findings", "Findings accurate", "Are the known findings right, and settled ones kept apart from contested ones?"),
        Criterion("sources", "Sources real", "Are the named sources real and relevant, with nothing invented?"),
        Criterion("confidence", "Confidence justified", "Are the open questions and the confidence level honest?"),
    ),
    "dissident": (
        Criterion("assessment", "Assessment right", "Is 'flawed' or 'holds' the right call for this claim?"),
        Criterion("steelman", "Steelman fair", "Is the claim stated at its strongest before it is challenged?"),
        Criterion("mechanism", "Mechanism named", "Is the flaw named, with the mechanism by which it misleads?"),
    ),
    "synthesist": (
        Criterion("mapping", "Mechanism mapped", "Are specific components and processes mapped, not a loose metaphor?"),
        Criterion("prediction", "Prediction useful", "Does the connection suggest or predict something worth knowing?"),
        Criterion("limits", "Limits stated", "Does it say honestly where the analogy breaks?"),
    ),
    "general": (
        Criterion("correct", "Correct", "Is the answer factually right?"),
        Criterion("helpful", "Helpful", "Does it answer what was asked, completely?"),
        Criterion("clear", "Clear", "Is it well organised and easy to follow?"),
    ),
}


def get_rubric(bench: str) -> tuple[Criterion, ...]:
    """The rubric of `bench`; ConfigError naming the supported benches otherwise."""
    try:
        return RUBRICS[bench]
    except KeyError:
        raise ConfigError(f"no review rubric for bench {bench!r}; supported: {', '.join(RUBRICS)}") from None
