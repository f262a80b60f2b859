"""Embed a model file in firmware as a C/C++ byte array, the way TensorFlow Lite Micro examples do.

The header holds ``alignas(16) const unsigned char NAME[] = {...}; const unsigned int NAME_len = N;``
(what ``xxd -i`` writes, plus the 16-byte alignment TFLM needs to read a flatbuffer in place from flash).
It compiles as C++11 and as C11 (where ``alignas`` comes from <stdalign.h>).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import TinyKDError

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_C_KEYWORDS = {"auto", "break", "case", "char", "const", "continue", "default", "do", "double", "else", "enum",
               "extern", "float", "for", "goto", "if", "inline", "int", "long", "register", "restrict", "return",
               "short", "signed", "sizeof", "static", "struct", "switch", "typedef", "union", "unsigned", "void",
               "volatile", "while", "class", "namespace", "template", "new", "delete", "alignas", "bool"}
BYTES_PER_LINE = 12


def write_c_array(path_in: str | Path, header_out: str | Path, var_name: str = "g_model") -> Path:
    """Write the bytes of ``path_in`` (e.g. a .tflite file) as the C array ``var_name`` in ``header_out``."""
    path_in, header_out = Path(path_in), Path(header_out)
    if not _IDENT.fullmatch(var_name) or var_name in _C_KEYWORDS:
        raise TinyKDError(f"'{var_name}' is not a valid C identifier for the model array",
                          "use letters, digits and underscores, not starting with a digit, e.g. g_model")
    if not path_in.is_file():
        raise TinyKDError(f"model file '{path_in}' not found", "export the model first (e.g. export_tflite)")
    data = path_in.read_bytes()
    if not data:
        raise TinyKDError(f"model file '{path_in}' is empty", "re-export the model")
    guard = re.sub(r"[^A-Za-z0-9]", "_", header_out.name).upper() + "_"
    rows = ",\n".join("  " + ", ".join(f"0x{b:02x}" for b in data[i:i + BYTES_PER_LINE])
                      for i in range(0, len(data), BYTES_PER_LINE))
    text = (f"// {path_in.name} as a C array ({len(data)} bytes), written by tinykd.\n"
            f"#ifndef {guard}\n#define {guard}\n\n"
            "#if !defined(__cplusplus)\n#include <stdalign.h>\n#endif\n\n"
            f"alignas(16) const unsigned char {var_name}[] = {{\n{rows}\n}};\n"
            f"const unsigned int {var_name}_len = {len(data)};\n\n"
            f"#endif  // {guard}\n")
    header_out.parent.mkdir(parents=True, exist_ok=True)
    tmp = header_out.with_name(f".{header_out.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, header_out)
    return header_out
