"""Process-level runtime settings of a run: what the console shows (``console``), glibc's
allocator keeping freed host memory (``host_memory``), and the profiler that costs nothing
(``profiler``). Each is set by the CLI for a run and imports nothing of the project."""

from groupwise.runtime.console import device_line, quiet_console
from groupwise.runtime.host_memory import keep_freed_host_memory
from groupwise.runtime.profiler import NoProfiler

__all__ = ["NoProfiler", "device_line", "keep_freed_host_memory", "quiet_console"]
