"""wavedistill: replace the attention of pretrained transformers with causal wave token mixers."""

from .io import load_student
from .mixers import build_mixer, list_mixers
from .surgery import convert, unconvert
from .version import __version__

__all__ = ["__version__", "build_mixer", "convert", "list_mixers", "load_student", "unconvert"]
