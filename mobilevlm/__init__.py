"""MobileVLM runtime: reference model, torch-free contracts, export and on-device runtime.

This module stays free of heavy imports so that ``import mobilevlm.runtime``
never loads torch or transformers.
"""

__version__ = "0.1.0"
