"""Options several commands share."""

import typer

from iceburg_mlx.sampling import DEFAULT_NO_REPEAT_NGRAM, DEFAULT_REPETITION_PENALTY

RepetitionPenaltyOpt = typer.Option(
    DEFAULT_REPETITION_PENALTY, "--repetition-penalty",
    help="Penalise tokens generated in the last 64 (> 1; 1 = off). The default was chosen from the role benches.")
NoRepeatNgramOpt = typer.Option(
    DEFAULT_NO_REPEAT_NGRAM, "--no-repeat-ngram",
    help="Never repeat an n-gram of the last 64 generated tokens (>= 2; 0 = off). The default was chosen from "
         "the role benches.")
