"""ser-lightning: ambiguity-aware speech emotion recognition as Lightning modules."""

__version__ = "0.1.0"
