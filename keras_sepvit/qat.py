"""Moved to `keras_sepvit.export.qat`; this import path keeps working."""

from keras_sepvit.export.qat import *  # noqa: F403
