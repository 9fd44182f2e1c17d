"""Import TensorFlow quietly.

TensorFlow 2.21 writes its start-up notices (the oneDNN line, absl's "All log messages before
absl::InitializeLog()" line, the CUDA stub) from C++ straight to file descriptor 2 while it is
imported: ``TF_CPP_MIN_LOG_LEVEL`` alone does not hide all of them. We point fd 2 at /dev/null
for the import only, then restore it, so real errors later still reach the terminal. oneDNN
stays on: turning it off to hide its notice would change speed and numerics.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import warnings

_tf = None


def tf():
    """Return the ``tensorflow`` module, imported once with its start-up noise suppressed."""
    global _tf
    if _tf is not None:
        return _tf
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    # Bounded retries and timeouts for TensorFlow's own gs:// reads (SavedModel inference).
    from tpuckpt_viz.checkpoint.remote import tf_gcs_defaults

    tf_gcs_defaults()
    saved = None
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
    except OSError:  # no real fd 2 (some embedded interpreters): import noisily
        saved = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import tensorflow as module
    finally:
        if saved is not None:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
    # TensorFlow's Python logger prints lines such as "ERROR:tensorflow:Couldn't match files
    # for checkpoint" by itself; we report such problems as UserError instead.
    module.get_logger().setLevel(logging.CRITICAL)
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.FATAL)
    except ImportError:  # absl ships with TensorFlow; be lenient all the same
        pass
    warnings.filterwarnings("ignore", module="tensorflow")
    warnings.filterwarnings("ignore", module="keras")
    # TensorFlow's import leaves a few hundred thousand long-lived Python objects; every
    # full garbage collection scanned them all (0.1-0.2 s pauses while listing a large
    # checkpoint). Freezing moves them out of the collector's generations.
    gc.freeze()
    _tf = module
    return module
