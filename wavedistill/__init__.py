"""wavedistill: replace the attention of pretrained transformers with causal wave token mixers."""

__version__ = "0.1.0"

from .io import load_student  # noqa: E402
from .mixers import build_mixer, list_mixers  # noqa: E402
from .surgery import convert, unconvert  # noqa: E402

__all__ = ["__version__", "build_mixer", "convert", "list_mixers", "load_student", "unconvert"]
