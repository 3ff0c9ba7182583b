"""Files -> chunks: the units of code that get embedded, stored and returned as hits.

``gate`` decides which files are chunked at all (size, binary, encoding, minified, generated,
language); ``units`` cuts a file's text into chunks (functions, classes, methods ... from a
real parser, windows for the rest); ``records`` holds what they return.
"""

from .gate import chunk_file, chunk_source, decode_source
from .records import (
    DEFAULT_LIMITS,
    Chunk,
    ChunkLimits,
    ChunkResult,
    SkipCode,
    SkipReason,
    content_hash,
)
from .units import chunk_text

__all__ = [
    "DEFAULT_LIMITS",
    "Chunk",
    "ChunkLimits",
    "ChunkResult",
    "SkipCode",
    "SkipReason",
    "chunk_file",
    "chunk_source",
    "chunk_text",
    "content_hash",
    "decode_source",
]
