"""LIBERO and LIBERO-Plus for peft-ckt: environments, perturbations, scripted expert, demonstrations, evaluation.

Needs the `libero` extra (`pip install 'peft-ckt[libero]'`). Importing this package is cheap; the simulator is
imported and configured (headless, offline) on first use. See docs/libero.md.
"""

from .runtime import LiberoUnavailableError, configure_libero, is_libero_available, libero_import_error

__all__ = ["LiberoUnavailableError", "configure_libero", "is_libero_available", "libero_import_error"]
