# Type stub for the CFFI extension built by _ffi_build.py: its objects are
# dynamic (their functions are the cdef's), so they are typed Any here, and
# each wrapper converts what it gets to the type it declares.
from typing import Any

ffi: Any
lib: Any
