"""The C++ standalone device of our builds: Brian2's, without a wall-clock read per step or delays written.

Brian2 2.9's ``Network::run`` (its ``network.cpp`` template) reads ``std::clock()`` after every time step to
check ``maximum_run_time``, even when no maximum is set: a system call per step, 4-5 % of a chunk's time.
`LcsnnStandaloneDevice` renders Brian2's own template and, where no maximum run time is set, moves that one
read from inside the loop to after it: ``_last_run_time`` (``last_run_info.txt``) is still the run's time,
nothing else in the loop changes, so the results are the same. Where the rendered source is not the one
expected (Brian2 2.10 reads the clock in the loop only for a maximum run time; OpenMP builds use
``omp_get_wtime``), it is left as Brian2 wrote it.

At the end of every run Brian2 writes every array to the results folder; the synapses' ``delay`` arrays (one
value per synapse, fixed by the structure: the package never reads them) are left out, 93 of an LC 1000
chunk's 258 MB. Reading a synapse's ``delay`` after a run of our build is therefore an error.

The CUDA device stays brian2cuda's own.
"""

from __future__ import annotations

import logging
import re
from types import SimpleNamespace

from brian2.devices.cpp_standalone.device import CPPStandaloneDevice
from brian2.synapses.synapses import Synapses

__all__ = ["LcsnnStandaloneDevice", "LEAN", "network_variant", "without_step_clock", "without_writes"]

logger = logging.getLogger(__name__)

#: Whether our builds take the per-step clock read out, write no delays and make YY by a generator (False:
#: Brian2's network.cpp and objects.cpp as they are and YY by its condition, the generic code for comparisons).
LEAN = True

#: The version of the changes made to network.cpp and objects.cpp; part of the structure key of a build.
VARIANT = "step-clock-off-1,no-delay-writes-1,yy-generator-1"

# Brian2 2.9, one thread: the read at the end of each step of the while loop
_STEP_READ = re.compile(
    r"\n[ \t]*current = std::clock\(\);"
    r"\n[ \t]*elapsed_realtime = \(double\)\(current - start\)/\(1 \* CLOCKS_PER_SEC\);"
)
_LOOP_END = "    Network::_globally_running = false;\n"


def network_variant() -> str:
    """What a build's network.cpp, objects.cpp and YY creation are: ``VARIANT`` or ``"brian2"`` (structure key)."""
    return VARIANT if LEAN else "brian2"


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


def without_writes(source: str, names) -> str:
    """``source`` (a rendered objects.cpp) without the blocks of ``_write_arrays`` that write the arrays
    ``names``; a name whose block is not found is left alone."""
    for name in names:
        block = re.compile(
            rf"\n[ \t]*ofstream outfile_{re.escape(name)};\n(?:(?![ \t]*ofstream ).*\n)*?"
            rf"[ \t]*std::cout << \"Error writing output file for {re.escape(name)}\.\" << endl;\n[ \t]*\}}\n"
        )
        found = block.findall(source)
        if len(found) == 1:
            source = source.replace(found[0], "\n", 1)
        else:
            logger.debug("objects.cpp: no single write of %s, left as it is", name)
    return source


def _capture(generate, *args) -> dict:
    """What ``generate(writer, *args)`` writes, by file name, instead of writing it."""
    rendered = {}

    class _Capture:
        def write(self, filename, contents):
            rendered[filename] = contents

    generate(_Capture(), *args)
    return rendered


class LcsnnStandaloneDevice(CPPStandaloneDevice):
    """Brian2's ``cpp_standalone`` device whose network.cpp reads the wall clock once per run, not per step,
    and whose objects.cpp writes no synapse delays into the results."""

    def generate_network_source(self, writer, compiler):
        if not LEAN or getattr(self, "_maximum_run_time", None) is not None:
            return super().generate_network_source(writer, compiler)
        for filename, contents in _capture(super().generate_network_source, compiler).items():
            if filename == "network.*":
                contents = SimpleNamespace(cpp_file=without_step_clock(contents.cpp_file), h_file=contents.h_file)
            writer.write(filename, contents)

    def generate_objects_source(self, writer, *args, **kwargs):
        if not LEAN:
            return super().generate_objects_source(writer, *args, **kwargs)
        delays = [name for var, name in self.dynamic_arrays.items()
                  if var.name == "delay" and isinstance(var.owner, Synapses)]  # fmt: skip
        generate = super().generate_objects_source
        for filename, contents in _capture(lambda w: generate(w, *args, **kwargs)).items():
            if filename == "objects.*":
                contents = SimpleNamespace(cpp_file=without_writes(contents.cpp_file, delays), h_file=contents.h_file)
            writer.write(filename, contents)
