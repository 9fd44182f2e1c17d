"""Quick test inference: SavedModels by tag set and signature, builders restored from
checkpoints, the op scan, inputs, and the TPU -> GPU -> CPU device choice.

``tpuckpt_viz.inference.api`` is the facade the CLI and the Infer page call.
"""
