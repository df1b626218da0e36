"""The two signal modes of knowledge fusion: the vocabulary that signals, methods and training share."""

from __future__ import annotations

from enum import Enum


class Signal(str, Enum):
    """Training mode: sources teacher-forced on the reference. Inference mode: the judged best generated response."""

    TRAINING = "training"
    INFERENCE = "inference"
