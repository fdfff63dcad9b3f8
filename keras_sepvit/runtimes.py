"""Moved to `keras_sepvit.export.runtimes`; this import path keeps working."""

from keras_sepvit.export.runtimes import *  # noqa: F403
