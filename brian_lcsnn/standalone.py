"""The C++ standalone device of our builds: Brian2's, with the time step loop's wall-clock read taken out.

Brian2 2.9's ``Network::run`` (its ``network.cpp`` template) reads ``std::clock()`` after every time step to
check ``maximum_run_time``, even when no maximum is set: a system call per step, 4-5 % of a chunk's time.
`LcsnnStandaloneDevice` renders Brian2's own template and, where no maximum run time is set, moves that one
read from inside the loop to after it: ``_last_run_time`` (``last_run_info.txt``) is still the run's time,
nothing else in the loop changes, so the results are the same. Where the rendered source is not the one
expected (Brian2 2.10 reads the clock in the loop only for a maximum run time; OpenMP builds use
``omp_get_wtime``), it is left as Brian2 wrote it. The CUDA device stays Brian2cuda's own.
"""

from __future__ import annotations

import logging
import re
from types import SimpleNamespace

from brian2.devices.cpp_standalone.device import CPPStandaloneDevice

__all__ = ["LcsnnStandaloneDevice", "STEP_CLOCK_OFF", "network_variant", "without_step_clock"]

logger = logging.getLogger(__name__)

#: Whether our builds take the per-step clock read out (False: Brian2's network.cpp as it is, for comparisons).
STEP_CLOCK_OFF = True

#: The version of the change made to network.cpp; part of the structure key of a build.
VARIANT = "step-clock-off-1"

# Brian2 2.9, one thread: the read at the end of each step of the while loop
_STEP_READ = re.compile(
    r"\n[ \t]*current = std::clock\(\);"
    r"\n[ \t]*elapsed_realtime = \(double\)\(current - start\)/\(1 \* CLOCKS_PER_SEC\);"
)
_LOOP_END = "    Network::_globally_running = false;\n"


def network_variant() -> str:
    """What a build's network.cpp is: ``VARIANT`` or ``"brian2"`` (for the structure key)."""
    return VARIANT if STEP_CLOCK_OFF else "brian2"


def without_step_clock(source: str) -> str:
    """``source`` (a rendered network.cpp) with the per-step clock read moved after the loop; unchanged where
    it has not exactly one such read before exactly one end of the loop."""
    reads = _STEP_READ.findall(source)
    if len(reads) != 1 or source.count(_LOOP_END) != 1 or source.find(_LOOP_END) < source.find(reads[0]):
        logger.debug("network.cpp has no single per-step clock read: left as Brian2 wrote it")
        return source
    source = source.replace(reads[0], "", 1)
    after = "".join(f"    {line.strip()}\n" for line in reads[0].strip().splitlines())
    return source.replace(_LOOP_END, after + _LOOP_END, 1)


class LcsnnStandaloneDevice(CPPStandaloneDevice):
    """Brian2's ``cpp_standalone`` device whose network.cpp reads the wall clock once per run, not per step."""

    def generate_network_source(self, writer, compiler):
        if not STEP_CLOCK_OFF or getattr(self, "_maximum_run_time", None) is not None:
            return super().generate_network_source(writer, compiler)
        rendered = {}

        class _Capture:  # takes the rendered template instead of writing it
            def write(self, filename, contents):
                rendered[filename] = contents

        super().generate_network_source(_Capture(), compiler)
        for filename, contents in rendered.items():
            if filename == "network.*":
                contents = SimpleNamespace(cpp_file=without_step_clock(contents.cpp_file), h_file=contents.h_file)
            writer.write(filename, contents)
