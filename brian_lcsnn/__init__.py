"""brian-lcsnn: unsupervised visual recognition with locally connected spiking networks in Brian2.

The data's way: a protocol (`protocol`) names a network (`topology`, `models`, `network`) that is compiled
once and run in chunks of samples (`simulation`, `runner`); Y spike counts feed the readouts (`readout`);
everything is kept in a run directory (`results`).
"""

__version__ = "0.1.0"
