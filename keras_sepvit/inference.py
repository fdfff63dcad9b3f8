"""Moved to `keras_sepvit.export.inference`; this import path keeps working."""

from keras_sepvit.export.inference import *  # noqa: F403
